"""Distillation benchmark: the same student trained alone and with each method, over seeds, on one dataset.

    python benchmarks/distill.py --dataset bccd --cpu --seeds 0 1 2 --parallel 2 --threads 1 \\
        --work-dir /work/bench-runs/bccd --out benchmarks/results/bccd-cpu-2026-11-30.json
    python benchmarks/distill.py --dataset raccoon --methods baseline detrdistill --seeds 0 1 2 --parallel 6

Protocol (equal schedule): every method runs the student config's fixed number of optimizer steps (same
batch size, same lr schedule); a time budget may size the teacher (``--teacher-set
train.time_budget_min=...``), never a student, and a student override that sets one is refused. Each
student's LAST checkpoint is evaluated on the reported split (bccd: test; raccoon: val), with no selection
on it. Every run records ``steps`` and ``train_seconds`` (so the price of a method sits next to its gain)
and its AP-vs-step curve on the val split (``train.eval_every_epochs`` of the student config).
The teacher is trained first with the teacher config unless ``--teacher DIR`` is given.

Resumable: results are appended to the JSON as runs finish and finished (method, seed) pairs are skipped,
so the benchmark can run in chunks (Ctrl-C, or ``--max-runs``); an interrupted training resumes from its
last checkpoint in ``--work-dir``. Several invocations may share one ``--out`` and ``--work-dir`` (e.g. one per
core, or per machine on a shared folder): saves merge under a file lock, and a run another invocation is
training is skipped (``benchmarks/results_file.py``). Writes ``<out>.json`` (+ ``.md`` table, ``.png`` bars and curves).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import results_file  # noqa: E402
from benchmarks.distill_report import bar_and_curve_chart, summarize  # noqa: E402

# method -> distill.* overrides (None = plain training, no teacher)
_OFF = ["distill.logits.enabled=false", "distill.feature.enabled=false", "distill.query_prior.enabled=false"]
METHODS: dict[str, list[str] | None] = {
    "baseline": None,
    "detrdistill": [],
    "logits": _OFF + ["distill.logits.enabled=true"],
    "feature": _OFF + ["distill.feature.enabled=true"],
    "query_prior": _OFF + ["distill.query_prior.enabled=true"],
    "fitnet": _OFF + ["distill.fitnet.enabled=true"],
    "logit_kd": _OFF + ["distill.logit_kd.enabled=true"],
    # paper-vs-code ablations of the full method
    "detrdistill_pos_neg": ["distill.logits.variant=pos_neg"],
    "detrdistill_encoder_outputs": ["distill.feature.source=encoder_outputs"],
    "detrdistill_contrastive": ["distill.contrastive.enabled=true"],
}
# the protocol's order: the comparison first, then each DETRDistill term alone on the same seeds
MAIN_METHODS = ["baseline", "detrdistill", "fitnet", "logit_kd", "logits", "feature", "query_prior"]
REPORT_SPLIT = {"bccd": "test", "raccoon": "val", "synthetic": "val"}
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class BenchmarkError(RuntimeError):
    pass


class Skipped(Exception):
    """The run is trained by another invocation, or already in the results file."""


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detrdistill.cli", *args]


def run(cmd: list[str], log_file: Path, env: dict | None = None) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if res.returncode != 0:
        raise BenchmarkError(f"command failed (rc {res.returncode}), see {log_file}: {shlex.join(cmd)}")


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def child_env(threads: int | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def val_curve(metrics_file: Path) -> list[list[float]]:
    """[[step, AP], ...] from the periodic (val split) evaluations of a run."""
    if not metrics_file.is_file():
        return []
    from detrdistill.engine.metrics import read_metrics
    return [[r["step"], r["eval/AP"]] for r in read_metrics(metrics_file) if r.get("eval/AP") is not None]


def train_teacher(args, work: Path) -> Path:
    out = work / "teacher"
    ev = out / "eval.json"
    with results_file.claim(out, wait=True):  # another invocation may be training it: wait, then it is done
        if not (out / "model" / "config.json").is_file() or not ev.is_file() or json.loads(ev.read_text()).get(
                "stopped_early"):
            run(cli("train", args.teacher_config, "--resume", "--output-dir", str(out),
                    *sets(args.set + args.teacher_set)), out / "log.txt", child_env(args.threads))
    return out / "model"


def train_student(args, work: Path, teacher: Path, method: str, seed: int) -> dict:
    out = work / f"{method}-s{seed}"
    common = ["--output-dir", str(out), "--resume", *sets(args.set + args.student_set + [f"train.seed={seed}"])]
    env = child_env(args.threads)
    t0 = time.monotonic()
    if METHODS[method] is None:
        run(cli("train", args.student_config, *common), out / "log.txt", env)
    else:
        run(cli("distill", args.student_config, "--teacher", str(teacher), *common, *sets(METHODS[method])),
            out / "log.txt", env)
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
            "wall_seconds_this_invocation": round(time.monotonic() - t0, 1),
            "threads": args.threads, "parallel_runs": args.parallel,
            "curve_val": val_curve(out / "metrics.jsonl")}


def params_of(model_dir: Path) -> int:
    from detrdistill.models.build import count_parameters, load_detector
    return count_parameters(load_detector(model_dir)).total


def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(REPORT_SPLIT))
    p.add_argument("--cpu", action="store_true", help="use the CPU-sized configs/cpu/<dataset>_{teacher,student}.yaml")
    p.add_argument("--teacher-config", help="default configs[/cpu]/<dataset>_teacher.yaml")
    p.add_argument("--student-config", help="default configs[/cpu]/<dataset>_student.yaml")
    p.add_argument("--teacher", help="trained teacher model dir (default: train one with --teacher-config)")
    p.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="student trainings run at once")
    p.add_argument("--threads", type=int, default=None, help="torch threads per training process (OMP_NUM_THREADS)")
    p.add_argument("--max-runs", type=int, default=None, help="stop after this many student runs (a chunk)")
    p.add_argument("--set", action="append", default=[], help="override for every run (e.g. data.num_workers=4)")
    p.add_argument("--teacher-set", action="append", default=[], help="override for the teacher run only")
    p.add_argument("--student-set", action="append", default=[],
                   help="override for the student runs only (e.g. train.max_steps=400); never a time budget")
    p.add_argument("--work-dir", default=None, help="default runs/bench/<dataset>[-cpu]")
    p.add_argument("--out", default=None, help="default benchmarks/results/<dataset>[-cpu]-<date>.json")
    args = p.parse_args(argv)
    budgeted = [o for o in args.set + args.student_set if o.replace(" ", "").startswith("train.time_budget_min")]
    if budgeted:
        p.error(f"{budgeted[0]}: students must run one equal step schedule; size it with train.max_steps "
                "(a time budget may size the teacher: --teacher-set)")
    cfg_dir = "configs/cpu" if args.cpu else "configs"
    args.teacher_config = args.teacher_config or f"{cfg_dir}/{args.dataset}_teacher.yaml"
    args.student_config = args.student_config or f"{cfg_dir}/{args.dataset}_student.yaml"
    args.tag = f"{args.dataset}-cpu" if args.cpu else args.dataset
    return args


def teacher_record(args, work: Path, teacher: Path, split: str) -> dict:
    t_eval = work / "teacher-eval"
    if not (t_eval / "eval.json").is_file():
        run(cli("eval", args.teacher_config, "--model", str(teacher), "--split", split, "--eval-dir", str(t_eval),
                *sets(args.set)), work / "teacher-eval.log", child_env(args.threads))
    stats = json.loads((t_eval / "eval.json").read_text())
    rec = {"config": args.teacher_config, **{k: stats[k] for k in STATS}, "params": params_of(teacher),
           "model_dir": str(teacher)}
    info = teacher.parent / "eval.json"  # a teacher trained by this project (here or passed with --teacher)
    if (teacher.parent / "metrics.jsonl").is_file() and info.is_file():
        run_info = json.loads(info.read_text())
        rec.update(steps=run_info.get("step"), train_seconds=run_info.get("train_seconds"),
                   curve_val=val_curve(teacher.parent / "metrics.jsonl"))
    return rec


def main(argv=None) -> int:
    args = parse_args(argv)
    date = dt.date.today().isoformat()
    work = Path(args.work_dir or ROOT / "runs" / "bench" / args.tag)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{args.tag}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results = results_file.read(out) or {"runs": [], "date": date}
    split = REPORT_SPLIT[args.dataset]

    # baseline-only chunks need no teacher, so they can run while it trains (a separate invocation)
    need_teacher = any(METHODS[m] is not None for m in args.methods)
    teacher = Path(args.teacher) if args.teacher else (train_teacher(args, work) if need_teacher
                                                       else work / "teacher" / "model")
    have_teacher = (teacher / "config.json").is_file() and (need_teacher or (teacher.parent / "eval.json").is_file())
    header = {"date": results.get("date", date), "dataset": args.dataset, "device": device_name(),
              "report_split": split,
              "protocol": "equal step schedule for every method (student config), last checkpoint, "
                          "no selection on the reported split; curves on val",
              "threads_per_run": args.threads, "parallel_runs": args.parallel,
              "command": shlex.join(["python", "benchmarks/distill.py", *sys.argv[1:]]),
              "teacher": teacher_record(args, work, teacher, split) if have_teacher else {},
              "student": {**results.get("student", {}), "config": args.student_config},
              "dates": [date]}

    def save(new_runs: list[dict]) -> None:
        """Merge into the file as it is now (another invocation may have saved since), under its lock."""
        nonlocal results
        with results_file.locked(out):
            results = results_file.merge(results_file.read(out), header, new_runs)
            if "params" not in results["student"] and new_runs:
                r = new_runs[0]
                results["student"]["params"] = params_of(work / f"{r['method']}-s{r['seed']}" / "model")
            results_file.write_atomic(out, results)
            results_file.write_atomic(out.with_suffix(".md"), summarize(results))
            if results["runs"]:
                bar_and_curve_chart(results, out.with_suffix(".png"))

    def train_claimed(m: str, s: int) -> dict:
        """Train (method, seed) unless another invocation trains it now or has saved it since this one started."""
        with results_file.claim(work / f"{m}-s{s}") as mine:
            if not mine:
                raise Skipped(f"{m} seed {s}: trained by another invocation now (lock in {work / f'{m}-s{s}'})")
            if (m, s) in {results_file.run_key(r) for r in (results_file.read(out) or {}).get("runs", [])}:
                raise Skipped(f"{m} seed {s}: already in {out}")
            return train_student(args, work, teacher, m, s)

    save([])
    done = {results_file.run_key(r) for r in results["runs"]}
    # seed-major: every method of seed 0 first, so a chunk cut short still holds complete comparisons
    todo = [(m, s) for s in args.seeds for m in args.methods if (m, s) not in done][:args.max_runs]
    print(f"{len(todo)} runs to do ({len(done)} already in {out})", flush=True)
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
            save([r])
            print(f"done {m} seed {s}: AP {r['AP']:.2f} in {r['steps']} steps, {r['train_seconds']:.0f} s",
                  flush=True)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
