"""Distillation benchmark: the same student trained alone and with each method, over seeds, on one dataset.

    python benchmarks/distill.py --dataset bccd --seeds 0 1 2 --parallel 4
    python benchmarks/distill.py --dataset raccoon --methods baseline detrdistill --seeds 0 1 2

Protocol: one fixed schedule for every method (the student config's), its LAST checkpoint, no
selection on the reported split (bccd: test split; raccoon: val, its only held-out split). The
teacher is trained first with the teacher config unless ``--teacher DIR`` is given.
Resumable: results are appended to the JSON as runs finish and finished (method, seed) pairs are
skipped, so the benchmark can run in short chunks; an interrupted run resumes from its checkpoint.
Writes ``benchmarks/results/<dataset>-<date>.json`` (+ ``.md`` table, ``.png`` bar chart).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

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
MAIN_METHODS = ["baseline", "detrdistill", "logits", "feature", "query_prior", "fitnet", "logit_kd"]
REPORT_SPLIT = {"bccd": "test", "raccoon": "val", "synthetic": "val"}
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detrdistill.cli", *args]


def run(cmd: list[str], log_file: Path) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT)
    if res.returncode != 0:
        raise RuntimeError(f"command failed (rc {res.returncode}), see {log_file}: {shlex.join(cmd)}")


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def train_teacher(args, work: Path) -> Path:
    out = work / "teacher"
    if not (out / "model" / "config.json").is_file() or json.loads((out / "eval.json").read_text()).get("stopped_early"):
        run(cli("train", args.teacher_config, "--resume", "--output-dir", str(out), *sets(args.set + args.teacher_set)),
            out / "log.txt")
    return out / "model"


def train_student(args, work: Path, teacher: Path, method: str, seed: int) -> dict:
    out = work / f"{method}-s{seed}"
    common = ["--output-dir", str(out), "--resume", *sets(args.set + args.student_set + [f"train.seed={seed}"])]
    t0 = time.monotonic()
    if METHODS[method] is None:
        run(cli("train", args.student_config, *common), out / "log.txt")
    else:
        run(cli("distill", args.student_config, "--teacher", str(teacher), *common, *sets(METHODS[method])),
            out / "log.txt")
    split = REPORT_SPLIT.get(args.dataset, "val")
    ev_dir = out / f"eval-{split}"
    run(cli("eval", args.student_config, "--model", str(out / "model"), "--split", split, "--eval-dir", str(ev_dir),
            *sets(args.set)), out / "log.txt")
    ev = json.loads((ev_dir / "eval.json").read_text())
    train_s = json.loads((out / "eval.json").read_text()).get("train_seconds", time.monotonic() - t0)
    return {"method": method, "seed": seed, **{k: ev[k] for k in STATS}, "train_seconds": train_s, "split": split}


def _commands(previous: str | None, this: str) -> str:
    """Every invocation that added runs to this file, joined by ' && ' (a resumed file keeps its history)."""
    parts = previous.split(" && ") if previous else []
    return " && ".join(parts + ([this] if this not in parts else []))


def params_of(model_dir: Path) -> int:
    from detrdistill.models.build import count_parameters, load_detector
    return count_parameters(load_detector(model_dir)).total


def device_name() -> str:
    import torch
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def summarize(results: dict) -> str:
    by: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r)
    base = by.get("baseline")
    base_ap = statistics.mean(r["AP"] for r in base) if base else None
    lines = [f"# Distillation benchmark: {results['dataset']}", "",
             f"device: {results['device']}; date: {results['date']}; split reported: "
             f"{results.get('report_split')}; teacher AP {results['teacher'].get('AP', float('nan')):.2f} "
             f"({results['teacher'].get('params', 0) / 1e6:.2f} M params), student "
             f"{results['student'].get('params', 0) / 1e6:.2f} M params", "",
             f"command: `{results['command']}`", "",
             "| method | seeds | AP (mean ± std) | AP50 | AP75 | gain vs baseline |", "|---|---|---|---|---|---|"]
    for m, rs in by.items():
        aps = [r["AP"] for r in rs]
        sd = statistics.stdev(aps) if len(aps) > 1 else 0.0
        gain = "" if base_ap is None or m == "baseline" else f"{statistics.mean(aps) - base_ap:+.2f}"
        lines.append(f"| {m} | {len(rs)} | {statistics.mean(aps):.2f} ± {sd:.2f} | "
                     f"{statistics.mean(r['AP50'] for r in rs):.2f} | {statistics.mean(r['AP75'] for r in rs):.2f} | {gain} |")
    return "\n".join(lines) + "\n"


def bar_chart(results: dict, path: Path) -> None:
    try:
        import matplotlib
    except ImportError:  # e.g. a GPU machine without it: the JSON and the table are what count
        print("matplotlib missing: no bar chart", flush=True)
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by: dict[str, list[float]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r["AP"])
    names = list(by)
    means = [statistics.mean(v) for v in by.values()]
    sds = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in by.values()]
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 4))
    ax.bar(names, means, yerr=sds, capsize=4, color=["grey" if n == "baseline" else "tab:blue" for n in names])
    if "AP" in results["teacher"]:
        ax.axhline(results["teacher"]["AP"], color="tab:red", ls="--", label="teacher")
        ax.legend()
    ax.set_ylabel(f"AP ({results.get('report_split')})")
    ax.set_title(f"{results['dataset']}: student AP by method (mean ± std over seeds)")
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dataset", required=True, choices=sorted(REPORT_SPLIT))
    p.add_argument("--teacher-config")
    p.add_argument("--student-config")
    p.add_argument("--teacher", help="trained teacher model dir (default: train one with --teacher-config)")
    p.add_argument("--methods", nargs="+", default=MAIN_METHODS, choices=list(METHODS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--parallel", type=int, default=1, help="student trainings run at once (one GPU fits several)")
    p.add_argument("--set", action="append", default=[], help="override for every run (e.g. data.num_workers=4)")
    p.add_argument("--teacher-set", action="append", default=[], help="override for the teacher run only")
    p.add_argument("--student-set", action="append", default=[],
                   help="override for the student runs only (e.g. train.time_budget_min=3)")
    p.add_argument("--work-dir", default=None, help="default runs/bench/<dataset>")
    p.add_argument("--out", default=None, help="default benchmarks/results/<dataset>-<date>.json")
    args = p.parse_args()
    args.teacher_config = args.teacher_config or f"configs/{args.dataset}_teacher.yaml"
    args.student_config = args.student_config or f"configs/{args.dataset}_student.yaml"
    date = dt.date.today().isoformat()
    work = Path(args.work_dir or ROOT / "runs" / "bench" / args.dataset)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"{args.dataset}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    teacher = Path(args.teacher) if args.teacher else train_teacher(args, work)
    results = json.loads(out.read_text()) if out.is_file() else {"runs": []}
    t_eval = work / "teacher-eval"
    split = REPORT_SPLIT[args.dataset]
    if not (t_eval / "eval.json").is_file():
        run(cli("eval", args.teacher_config, "--model", str(teacher), "--split", split, "--eval-dir", str(t_eval),
                *sets(args.set)), work / "teacher-eval.log")
    t_stats = json.loads((t_eval / "eval.json").read_text())
    results.update({"dataset": args.dataset, "device": device_name(), "date": date, "report_split": split,
                    "selection": "fixed schedule, last checkpoint, no selection on the reported split",
                    "command": _commands(results.get("command"), shlex.join(["python", "benchmarks/distill.py",
                                                                             *sys.argv[1:]])),
                    "teacher": {"config": args.teacher_config, "AP": t_stats["AP"], "AP50": t_stats["AP50"],
                                "params": params_of(teacher)},
                    "student": {**results.get("student", {}), "config": args.student_config}})
    done = {(r["method"], r["seed"]) for r in results["runs"]}
    todo = [(m, s) for m in args.methods for s in args.seeds if (m, s) not in done]

    def save() -> None:
        tmp = out.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(results, indent=1))
        tmp.replace(out)
        out.with_suffix(".md").write_text(summarize(results))
        if results["runs"]:
            bar_chart(results, out.with_suffix(".png"))

    save()
    print(f"{len(todo)} runs to do ({len(done)} already in {out})", flush=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        futures = {pool.submit(train_student, args, work, teacher, m, s): (m, s) for m, s in todo}
        for fut in as_completed(futures):
            m, s = futures[fut]
            try:
                r = fut.result()
            except RuntimeError as e:
                print(f"FAILED {m} seed {s}: {e}", flush=True)
                continue
            results["runs"].append(r)
            if "params" not in results["student"]:
                results["student"]["params"] = params_of(work / f"{m}-s{s}" / "model")
            save()
            print(f"done {m} seed {s}: AP {r['AP']:.2f}", flush=True)
    print(summarize(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
