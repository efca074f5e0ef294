"""Distillation benchmark: the same student trained alone and with each method, over seeds, on one dataset.

    python benchmarks/distill.py --dataset bccd --cpu --seeds 0 1 2 --parallel 2 --threads 1 \\
        --work-dir runs/bench/bccd --out benchmarks/results/bccd-cpu-2026-11-30.json
    python benchmarks/distill.py --dataset bccd --cpu --methods detrdistill@t600 detrdistill@self \\
        --teacher-variant t600=snapshot:600 --teacher-variant self=baseline:9 ...
    python benchmarks/distill.py --verify benchmarks/results/bccd-cpu-2026-11-30.json --method baseline --seed 0

Protocol (equal schedule): every method runs the student config's fixed number of optimizer steps (same
batch size, same lr schedule); a time budget may size the teacher (``--teacher-set
train.time_budget_min=...``), never a student, and a student override that sets one is refused. The one
exception is ``baseline_long``, the equal-cost control: the student alone for as many steps as fit in the mean
training time of the DETRDistill runs of the same file (``detrdistill``, or in a file without them its one
``detrdistill_*`` variant; ``steps * mean(detrdistill s) / mean(baseline s)``, in
CPU seconds of the training process when every run recorded them, else wall seconds; fixed at its first run and
recorded; its lr schedule stretched to that length). Each student's LAST checkpoint is
evaluated on the reported split (bccd: test; raccoon: val), with no selection on it. Every run records ``steps``,
``train_seconds`` (so the price of a method sits next to its gain), its AP-vs-step curve on the val split, the
teacher it learned from, the environment it ran in (git commit and whether the checkout was dirty, python /
torch / transformers / accelerate versions, device, threads: ``benchmarks/run_env.py``) and a hash of its
resolved config. A file holds one environment: a run from another commit or environment is refused unless
``--allow-mixed`` (the report then shows the mix). Teachers and their variants (``M@NAME``): see
``benchmarks/teachers.py``.

Resumable: results are appended to the JSON as runs finish and finished (method, seed) pairs are skipped,
so the benchmark can run in chunks (Ctrl-C, or ``--max-runs``); an interrupted training resumes from its
last checkpoint in ``--work-dir``. Several invocations may share one ``--out`` and ``--work-dir`` (e.g. one per
core, or per machine on a shared folder): saves merge under a file lock, and a run another invocation is
training is skipped (``benchmarks/results_file.py``). Writes ``<out>.json`` (+ ``.md`` table, ``.png`` bars and
curves). ``--verify FILE --method M --seed N`` reruns one committed run (``benchmarks/verify.py``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import results_file, run_env, teachers  # noqa: E402
from benchmarks.distill_report import save_with_report, summarize  # noqa: E402
from benchmarks.stats import cost_clock  # noqa: E402
from benchmarks.runner import (STATS, BenchmarkError, child_env, cli, params_of, resolve, run,  # noqa: E402
                               sets, val_curve)



@dataclass(frozen=True)
class Method:
    """How a benchmark method trains the student: with a teacher (``distill``) or alone (``train``), plus overrides."""
    teacher: bool
    overrides: tuple[str, ...] = ()


_QUALITY_WARMUP = ("distill.logits.class_loss=quality_focal", "distill.logits.box_weighting=teacher_score",
                   "distill.warmup_steps=600")
_OFF = ("distill.logits.enabled=false", "distill.feature.enabled=false", "distill.query_prior.enabled=false")
METHODS: dict[str, Method] = {
    "baseline": Method(False),
    "baseline_long": Method(False),  # the equal-cost control (see the module docstring)
    "baseline_set": Method(False, ("loss.recipe=set",)),  # a family's own recipe vs the set criterion
    "detrdistill": Method(True),
    "logits": Method(True, _OFF + ("distill.logits.enabled=true",)),
    "feature": Method(True, _OFF + ("distill.feature.enabled=true",)),
    "query_prior": Method(True, _OFF + ("distill.query_prior.enabled=true",)),
    "fitnet": Method(True, _OFF + ("distill.fitnet.enabled=true",)),
    "logit_kd": Method(True, _OFF + ("distill.logit_kd.enabled=true",)),
    # paper-vs-code ablations of the full method
    "detrdistill_pos_neg": Method(True, ("distill.logits.variant=pos_neg",)),
    "detrdistill_encoder_outputs": Method(True, ("distill.feature.source=encoder_outputs",)),
    "detrdistill_contrastive": Method(True, ("distill.contrastive.enabled=true",)),
    # the full method less one term (leave-one-out, where a term alone says too little)
    "detrdistill_no_logits": Method(True, ("distill.logits.enabled=false",)),
    "detrdistill_no_feature": Method(True, ("distill.feature.enabled=false",)),
    "detrdistill_no_query_prior": Method(True, ("distill.query_prior.enabled=false",)),
    "detrdistill_pos_neg_no_query_prior": Method(True, ("distill.logits.variant=pos_neg",
                                                        "distill.query_prior.enabled=false")),
    # the full method with the logits term weighted away from background pairs and every term ramped in over the
    # first 600 steps (a quarter of the CPU schedules): what screened best on the small D-FINE student
    "detrdistill_quality_warmup": Method(True, _QUALITY_WARMUP),
    # the same, its terms falling linearly to 0 at half the run and the second half the student's alone (no
    # teacher forward): the early speed-up of distillation at about 60 % of its cost
    "detrdistill_quality_warmup_stop50": Method(True, _QUALITY_WARMUP + ("distill.decay=linear",
                                                                         "distill.stop_at=0.5")),
    # the same, the query-prior group also distilled toward the teacher's own predictions for the same queries, slot
    # for slot (consistent-query distillation, KD-DETR; distill.query_prior.teacher_predictions_weight)
    "detrdistill_quality_warmup_consistent": Method(True, _QUALITY_WARMUP + (
        "distill.query_prior.teacher_predictions_weight=1.0",)),
    # the same, no term's gradient allowed above the student's own (distill.max_term_ratio=1, measured every 50
    # steps): whether the cap undoes what the group's take-over of the update cost
    "detrdistill_quality_warmup_consistent_cap": Method(True, _QUALITY_WARMUP + (
        "distill.query_prior.teacher_predictions_weight=1.0", "distill.max_term_ratio=1.0")),
}
# the protocol's order: the comparison first, then each DETRDistill term alone on the same seeds
MAIN_METHODS = ["baseline", "detrdistill", "fitnet", "logit_kd", "logits", "feature", "query_prior"]
REPORT_SPLIT = {"bccd": "test", "raccoon": "val", "synthetic": "val"}


class Skipped(Exception):
    """The run is trained by another invocation, or already in the results file."""


def split_method(method: str) -> tuple[str, str | None]:
    """``"detrdistill@t600"`` -> ``("detrdistill", "t600")``; a plain method has no teacher variant."""
    base, _, variant = method.partition("@")
    return base, (variant or None)


def needs_teacher(method: str) -> bool:
    return METHODS[split_method(method)[0]].teacher


def train_student(args, work: Path, teacher: Path | None, method: str, seed: int, steps: int | None = None) -> dict:
    base, variant = split_method(method)
    out = work / f"{method}-s{seed}"
    extra = [f"train.seed={seed}"] + ([f"train.max_steps={steps}"] if steps else [])
    common = ["--output-dir", str(out), "--resume", *sets(args.set + args.student_set + extra)]
    env = child_env(args.threads)
    teachers.check_env(out, args.allow_mixed, args.threads)
    t0 = time.monotonic()
    spec = METHODS[base]
    if spec.teacher:
        run(cli("distill", args.student_config, "--teacher", str(teacher), *common, *sets(list(spec.overrides))),
            out / "log.txt", env)
    else:
        run(cli("train", args.student_config, *common, *sets(list(spec.overrides))), out / "log.txt", env)
    run_info = json.loads((out / "eval.json").read_text())
    if run_info.get("stopped_early"):
        raise BenchmarkError(f"{out} stopped before its schedule ended (step {run_info.get('step')}); "
                             "run the benchmark again to resume it")
    split = REPORT_SPLIT.get(args.dataset, "val")
    ev_dir = out / f"eval-{split}"
    if not (ev_dir / "eval.json").is_file():
        run(cli("eval", args.student_config, "--model", str(out / "model"), "--split", split, "--eval-dir",
                str(ev_dir), *sets(args.set)), out / "log.txt", env)
    ev = json.loads((ev_dir / "eval.json").read_text())
    return {"method": method, "seed": seed, **{k: ev[k] for k in STATS}, "split": split,
            "date": dt.date.today().isoformat(),  # the day this record was written
            "steps": run_info.get("step"), "train_seconds": run_info.get("train_seconds"),
            "train_cpu_seconds": run_info.get("train_cpu_seconds"),
            "wall_seconds_this_invocation": round(time.monotonic() - t0, 1),
            "threads": args.threads, "parallel_runs": args.parallel,
            "teacher": (variant or "teacher") if spec.teacher else None,
            "env": {**(teachers.folder_env(out) or {}), "threads": args.threads},
            "config_hash": run_env.config_hash(out / "config.yaml"),
            "curve_val": val_curve(out / "metrics.jsonl")}


def long_schedule(results: dict, args) -> dict:
    """Steps of ``baseline_long``: the schedule length that costs what the reference method costs, from the runs of
    the same file (fixed once, recorded in the file's ``baseline_long``)."""
    if results.get("baseline_long"):
        return results["baseline_long"]
    if args.long_steps:
        return {"steps": args.long_steps, "cost_ratio": None, "from": "--long-steps"}
    reference = args.long_from or results_file.full_method(results)
    runs = {m: [r for r in results["runs"] if r["method"] == m] for m in ("baseline", reference)}
    steps = {r.get("steps") for r in runs["baseline"]}
    if not runs["baseline"] or not runs[reference] or len(steps) != 1:
        raise BenchmarkError(f"baseline_long needs finished baseline and {reference} runs in the file (their "
                             "training times set its length); run those first, name the method whose cost it "
                             "matches with --long-from METHOD, or give --long-steps N")
    # a baseline timed beside three other runs and a distilled run timed beside one: wall seconds mislead
    clock = cost_clock(runs["baseline"] + runs[reference])
    if not all(r.get(clock) for rs in runs.values() for r in rs):
        raise BenchmarkError(f"baseline_long: a baseline or {reference} run of the file has no training time; "
                             "give --long-steps N")
    ratio = statistics.mean(r[clock] for r in runs[reference]) / statistics.mean(r[clock] for r in runs["baseline"])
    return {"steps": round(steps.pop() * ratio), "cost_ratio": round(ratio, 3), "from": reference,
            "clock": clock, "runs": {m: len(v) for m, v in runs.items()}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", choices=sorted(REPORT_SPLIT), help="required unless --verify")
    p.add_argument("--cpu", action="store_true", help="use the CPU-sized configs/cpu/<dataset>_{teacher,student}.yaml")
    p.add_argument("--teacher-config", help="default configs[/cpu]/<dataset>_teacher.yaml")
    p.add_argument("--student-config", help="default configs[/cpu]/<dataset>_student.yaml")
    p.add_argument("--teacher", help="trained teacher model dir (default: train one with --teacher-config)")
    p.add_argument("--teacher-variant", action="append", default=[], metavar="NAME=KIND:ARG",
                   help="another teacher for methods written M@NAME: snapshot:STEP, steps:N, baseline:SEED, dir:PATH "
                        "(see benchmarks/teachers.py)")
    p.add_argument("--methods", nargs="+", default=MAIN_METHODS, help=f"of {list(METHODS)}, optionally @VARIANT")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="student trainings run at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training process (OMP_NUM_THREADS)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many student runs (a chunk)")
    p.add_argument("--set", action="append", default=[], help="override for every run (e.g. data.num_workers=4)")
    p.add_argument("--teacher-set", action="append", default=[], help="override for the teacher run only")
    p.add_argument("--student-set", action="append", default=[],
                   help="override for the student runs only (e.g. train.max_steps=400); never a time budget")
    p.add_argument("--long-steps", type=int, default=None,
                   help="baseline_long: this many steps instead of the measured equal-cost length")
    p.add_argument("--long-from", default=None, metavar="METHOD",
                   help="baseline_long: match the cost of this method of the file (default: its full DETRDistill "
                        "arm, detrdistill or its one detrdistill_* variant)")
    p.add_argument("--allow-mixed", action="store_true",
                   help="add runs made on another commit or environment than the file's (the report shows the mix)")
    p.add_argument("--work-dir", default=None, help="default runs/bench/<dataset>[-cpu] (relative: to the repository)")
    p.add_argument("--out", default=None, help="default benchmarks/results/<dataset>[-cpu]-<date>.json")
    p.add_argument("--verify", metavar="FILE", help="rerun one run of a results file (--method, --seed) and compare")
    p.add_argument("--method", help="--verify: the method of the run to rerun")
    p.add_argument("--seed", type=int, help="--verify: the seed of the run to rerun")
    args = p.parse_args(argv)
    if args.verify:
        if args.method is None or args.seed is None:
            p.error("--verify needs --method and --seed")
        return args
    if not args.dataset:
        p.error("--dataset is required")
    budgeted = [o for o in args.set + args.student_set if o.replace(" ", "").startswith("train.time_budget_min")]
    if budgeted:
        p.error(f"{budgeted[0]}: students must run one equal step schedule; size it with train.max_steps "
                "(a time budget may size the teacher: --teacher-set)")
    unknown = [m for m in args.methods if split_method(m)[0] not in METHODS]
    if unknown:
        p.error(f"unknown method {unknown[0]!r}; known: {', '.join(METHODS)} (optionally @VARIANT)")
    try:
        args.variants = teachers.parse_variants(args.teacher_variant)
    except BenchmarkError as e:
        p.error(str(e))
    missing = sorted({v for m in args.methods if (v := split_method(m)[1]) and v not in args.variants})
    if missing:
        p.error(f"teacher variant {missing[0]!r} is used by a method but not declared (--teacher-variant "
                f"{missing[0]}=KIND:ARG)")
    cfg_dir = "configs/cpu" if args.cpu else "configs"
    args.teacher_config = args.teacher_config or f"{cfg_dir}/{args.dataset}_teacher.yaml"
    args.student_config = args.student_config or f"{cfg_dir}/{args.dataset}_student.yaml"
    args.tag = f"{args.dataset}-cpu" if args.cpu else args.dataset
    return args


def check_one_environment(results: dict, out: Path, allow_mixed: bool) -> None:
    """Refuse to add runs to a file whose runs were made in another environment (unless ``allow_mixed``)."""
    env = run_env.environment(None)
    here = run_env.environment_key(env)
    other = [r for r in results.get("runs", []) if run_env.environment_key(r.get("env")) != here]
    if other and not allow_mixed:
        differs = "; ".join(run_env.differences(env, other[0].get("env"), keys=run_env.ENV_KEYS))
        raise BenchmarkError(
            f"{out} holds {len(other)} run(s) made in another environment (e.g. {other[0]['method']} seed "
            f"{other[0]['seed']}: {run_env.describe(other[0].get('env'))}); this checkout is "
            f"{run_env.describe(env)}; they differ in {differs}. A comparison is made on one commit and "
            "environment: write to a new --out, or pass --allow-mixed (the report then shows the mix)")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify:
        from benchmarks.verify import verify
        return verify(args)
    date = dt.date.today().isoformat()
    work = resolve(args.work_dir or Path("runs") / "bench" / args.tag)
    out = resolve(args.out or Path("benchmarks") / "results" / f"{args.tag}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = results_file.read(out) or {"runs": [], "date": date}
    check_one_environment(results, out, args.allow_mixed)
    split = REPORT_SPLIT[args.dataset]

    # baseline-only chunks need no teacher, so they can run while it trains (a separate invocation)
    need_teacher = any(needs_teacher(m) and split_method(m)[1] is None for m in args.methods) or any(
        k == "snapshot" for k, _ in args.variants.values())
    teacher = teachers.main_teacher(args, work, need_teacher)
    # a teacher this benchmark trains counts once its training has finished (a stopped one has a model too)
    have_teacher = (teacher / "config.json").is_file() if args.teacher else teachers.trained(teacher.parent)
    variants = sorted({v for m in args.methods if (v := split_method(m)[1])})
    header = {"date": results.get("date", date), "dataset": args.dataset, "device": run_env.device_name(),
              "report_split": split,
              "protocol": "equal step schedule for every method (student config; baseline_long: the equal-cost "
                          "length), last checkpoint, no selection on the reported split; curves on val",
              "threads_per_run": args.threads, "parallel_runs": args.parallel,
              "command": shlex.join(["python", "benchmarks/distill.py", *run_env.portable_command(sys.argv[1:])]),
              "overrides": {"set": args.set, "teacher_set": args.teacher_set, "student_set": args.student_set},
              "teacher": teachers.teacher_record(args, work, teacher, split) if have_teacher else {},
              "teachers": {**results.get("teachers", {}),
                           **{v: teachers.variant_record(args, work, teacher, v, split) for v in variants}},
              "student": {**results.get("student", {}), "config": args.student_config},
              "dates": [date]}

    def save(new_runs: list[dict], extra: dict | None = None) -> None:
        """Merge into the file as it is now (another invocation may have saved since), under its lock."""
        nonlocal results
        with results_file.locked(out):
            results = results_file.merge(results_file.read(out), {**header, **(extra or {})}, new_runs)
            if "params" not in results["student"] and new_runs:
                r = new_runs[0]
                results["student"]["params"] = params_of(work / f"{r['method']}-s{r['seed']}" / "model")
            save_with_report(out, results)

    def train_claimed(m: str, s: int) -> dict:
        """Train (method, seed) unless another invocation trains it now or has saved it since this one started;
        saved before its claim is released, so no other invocation can claim it between its end and its save."""
        with results_file.claim(work / f"{m}-s{s}") as mine:
            if not mine:
                raise Skipped(f"{m} seed {s}: trained by another invocation now (lock in {work / f'{m}-s{s}'})")
            on_disk = results_file.read(out) or {}
            if (m, s) in {results_file.run_key(r) for r in on_disk.get("runs", [])}:
                raise Skipped(f"{m} seed {s}: already in {out}")
            variant = split_method(m)[1]
            t = teachers.variant_dir(args, work, teacher, variant) if variant else teacher
            steps = None
            if m == "baseline_long":
                schedule = long_schedule(on_disk, args)
                save([], {"baseline_long": schedule})
                steps = schedule["steps"]
            r = train_student(args, work, t if needs_teacher(m) else None, m, s, steps)
            save([r])
            return r

    save([])
    done = {results_file.run_key(r) for r in results["runs"]}
    # seed-major: every method of seed 0 first, so a chunk cut short still holds complete comparisons
    todo = [(m, s) for s in args.seeds for m in args.methods if (m, s) not in done][:args.max_runs]
    print(f"{len(todo)} runs to do ({len(done)} already in {run_env.relative(out)})", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {pool.submit(train_claimed, m, s): (m, s) for m, s in todo}
        for fut in as_completed(futures):
            m, s = futures[fut]
            try:
                r = fut.result()
            except Skipped as e:
                print(f"skipped {e}", flush=True)
                continue
            except BenchmarkError as e:
                print(f"FAILED {m} seed {s}: {e}", flush=True)
                continue
            print(f"done {m} seed {s}: AP {r['AP']:.2f} in {r['steps']} steps, {r['train_seconds']:.0f} s",
                  flush=True)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchmarkError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
