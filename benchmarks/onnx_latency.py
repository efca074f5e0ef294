"""ONNX latency benchmark: teacher vs student under onnxruntime on the CPU (and PyTorch eager beside it).

    python benchmarks/onnx_latency.py                                   # every configs/*_teacher|student.yaml
    python benchmarks/onnx_latency.py --configs configs/bccd_teacher.yaml configs/bccd_student.yaml --runs 5

Per config: the model is built from the config (random init: latency does not depend on the weights),
exported with ``detrdistill.export.onnx_export`` and run at batch 1 on an image of the config's eval size
(a 4:3 landscape image, square for the synthetic set, resized as the eval transforms do, sides
rounded up to 32). Reports the median
of ``--runs`` timed runs after ``--warmup`` runs, for onnxruntime (CPU provider) and PyTorch eager, with
the same number of intra-op threads, plus the largest |onnxruntime - PyTorch| of logits and boxes.
Results: ``benchmarks/results/onnx-latency-cpu-<date>.json`` and ``.md`` (command, device, date).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import results_file, run_env  # noqa: E402
from detrdistill.config import load_config  # noqa: E402

PAIRS = ("synthetic", "raccoon", "bccd")


def students_of(teacher: str, configs: list[str]) -> list[str]:
    """The student configs of ``teacher`` (``<name>_teacher.yaml``) among ``configs``: ``<name>_student.yaml`` and
    its variants ``<name>_student_<variant>.yaml`` in the same folder, in the order given."""
    t = Path(teacher)
    stem = t.name[: -len("_teacher.yaml")] + "_student"
    return [c for c in configs if Path(c).parent == t.parent
            and (Path(c).name == stem + ".yaml" or (Path(c).name.startswith(stem + "_") and c.endswith(".yaml")))]


def default_configs() -> list[str]:
    """Teacher/student pairs of configs/ (and configs/cpu/ when present), each teacher before its students."""
    out = []
    for folder in (ROOT / "configs", ROOT / "configs" / "cpu"):
        every = [str(p.relative_to(ROOT)) for p in sorted(folder.glob("*.yaml"))]
        for teacher in sorted(folder.glob("*_teacher.yaml")):
            students = students_of(str(teacher.relative_to(ROOT)), every)
            if students:
                out += [str(teacher.relative_to(ROOT))] + students
    return out


def class_names(cfg) -> dict[int, str]:
    """The dataset's classes from the training annotations (one dummy class when unavailable)."""
    split = cfg.data.train
    if split is not None and Path(split.ann_file).is_file():
        cats = sorted(json.loads(Path(split.ann_file).read_text())["categories"], key=lambda c: c["id"])
        return {i: c["name"] for i, c in enumerate(cats)}
    if cfg.data.synthetic:
        from detrdistill.data.synth import CLASSES
        return dict(enumerate(CLASSES))
    return {0: "object"}


def input_size(cfg) -> tuple[int, int]:
    from detrdistill.data.transforms import resized_hw

    h0, w0 = (cfg.data.synth_size,) * 2 if cfg.data.synthetic and cfg.data.train is None else (480, 640)
    h, w = resized_hw(h0, w0, cfg.data.eval_size, cfg.data.max_size)
    return -(-h // 32) * 32, -(-w // 32) * 32


def median_seconds(fn, runs: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(path: str, runs: int, warmup: int, threads: int, workdir: Path) -> dict:
    from detrdistill.export.onnx_export import (example_inputs, export_onnx, max_abs_difference,
                                                onnx_session)
    from detrdistill.models.build import build_model, count_parameters

    cfg = load_config(path)
    torch.manual_seed(0)
    model = build_model(cfg.model.model_copy(update={"pretrained": None}), class_names(cfg)).eval()
    h, w = input_size(cfg)
    onnx_file = export_onnx(model, workdir / (Path(path).stem + ".onnx"), h, w)
    session = onnx_session(onnx_file, threads=threads)
    inputs = example_inputs(model, 1, h, w)
    feed = {k: v.numpy() for k, v in inputs.items()}
    ort_s = median_seconds(lambda: session.run(None, feed), runs, warmup)
    with torch.no_grad():
        torch_s = median_seconds(lambda: model(**inputs), runs, warmup)
    return {"config": path, "family": cfg.model.family, "params": count_parameters(model).total,
            "image": [h, w], "onnxruntime_s": ort_s, "pytorch_s": torch_s,
            "max_abs_diff": max_abs_difference(model, session, inputs),
            "onnx_mb": round(onnx_file.stat().st_size / 2**20, 1)}


def write_markdown(res: dict, out: Path) -> None:
    lines = [f"# ONNX latency: CPU, {res['date']}", "", f"command: `{res['command']}`", "",
             f"device: {res['device']}; {res['threads']} intra-op thread(s), batch 1, median of {res['runs']} runs "
             f"after {res['warmup']} warm-up runs; random-init models built from each config.", "",
             f"environment: {run_env.describe(res.get('environment'))}", "",
             "| config | family | params | image | onnxruntime ms | PyTorch ms | max abs diff logits / boxes |",
             "|---|---|---|---|---|---|---|"]
    for r in res["models"]:
        d = r["max_abs_diff"]
        lines.append(f"| {r['config']} | {r['family']} | {r['params'] / 1e6:.1f} M | {r['image'][0]}x{r['image'][1]} "
                     f"| {r['onnxruntime_s'] * 1e3:.0f} | {r['pytorch_s'] * 1e3:.0f} "
                     f"| {d['logits']:.1e} / {d['pred_boxes']:.1e} |")
    by = {r["config"]: r for r in res["models"]}
    names = list(by)
    ratios = [f"- `{t}` / `{st}`: {by[t]['onnxruntime_s'] / by[st]['onnxruntime_s']:.1f}x (onnxruntime), "
              f"{by[t]['pytorch_s'] / by[st]['pytorch_s']:.1f}x (PyTorch)"
              for t in names if t.endswith("_teacher.yaml") for st in students_of(t, names)]
    lines += ["", "Teacher / student latency:", ""] + ratios
    lines += ["", "CPU timings on a shared 2-core machine are noisy (other jobs ran at the same time): "
              "the bccd and raccoon configs build the same architectures (only the class count differs), so the "
              "spread between their rows is the noise. Models of a few hundred thousand parameters (synthetic) "
              "are dominated by per-call overhead, not by their size."]
    results_file.write_atomic(out, "\n".join(lines) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--configs", nargs="+", help="config files (default: every teacher/student pair in configs/)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per model")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for onnxruntime and PyTorch")
    ap.add_argument("--out", help="JSON result path (default benchmarks/results/onnx-latency-cpu-<date>.json)")
    ap.add_argument("--report-only", metavar="JSON", help="only rewrite the .md beside an existing result JSON")
    args = ap.parse_args()
    if args.report_only:
        write_markdown(json.loads(Path(args.report_only).read_text()), Path(args.report_only).with_suffix(".md"))
        return 0
    torch.set_num_threads(args.threads)
    date = dt.date.today().isoformat()
    import onnxruntime

    res = {"command": "python " + " ".join(shlex.quote(a) for a in sys.argv), "date": date,
           "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} torch threads of {__import__('os').cpu_count()} "
                     f"cores), torch {torch.__version__}, onnxruntime {onnxruntime.__version__}",
           "environment": run_env.environment(args.threads),
           "threads": args.threads, "runs": args.runs, "warmup": args.warmup, "models": []}
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.configs or default_configs():
            res["models"].append(bench_config(path, args.runs, args.warmup, args.threads, Path(tmp)))
            print(json.dumps(res["models"][-1]), flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"onnx-latency-cpu-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_atomic(out, res)
    write_markdown(res, out.with_suffix(".md"))
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    from detrdistill.errors import ConfigError

    try:
        sys.exit(main())
    except ConfigError as e:  # e.g. DETRDISTILL_DATA not set: one line naming the config and what to do
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
