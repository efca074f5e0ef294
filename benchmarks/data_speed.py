"""Training data pipeline cost per image, with and without the in-memory image cache (``data.cache_images``).

For each config: the training dataset's ``__getitem__`` (decode + flip / crop / resize + to-tensor, the config's
augmentations) timed over its images, one thread, in interleaved rounds so both variants see the same machine
load. "cached" is the second epoch of a dataset whose cache holds every image (the steady state of a training run
after its first epoch). The items are checked to be identical. Results: ``benchmarks/results/data-speed-<tag>-<date>
.{json,md}``.

    python benchmarks/data_speed.py --configs configs/cpu/bccd_student.yaml configs/cpu/raccoon_student.yaml
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from benchmarks import results_file, run_env  # noqa: E402


def bench(path: str, rounds: int) -> dict:
    from detrdistill.config import load_config
    from detrdistill.data import build_dataset
    from detrdistill.engine.loading import SeededDataset

    cfg = load_config(path)
    plain = SeededDataset(build_dataset(cfg.data.train, cfg.data.model_copy(update={"cache_images": 0.0}), True), 0)
    cached = SeededDataset(build_dataset(cfg.data.train, cfg.data.model_copy(update={"cache_images": 64.0}), True), 0)
    n = len(plain)
    for i in range(n):  # epoch 0 fills the cache
        cached[i]
    ms = {"uncached": [], "cached": []}
    for r in range(rounds):
        keys = range((r + 1) * n, (r + 2) * n)  # epoch r + 1 of both
        for name, ds in (("uncached", plain), ("cached", cached)) if r % 2 == 0 else (("cached", cached),
                                                                                      ("uncached", plain)):
            t0 = time.perf_counter()
            for k in keys:
                ds[k]
            ms[name].append((time.perf_counter() - t0) / n * 1000)
    same = all(torch.equal(plain[k][0], cached[k][0]) for k in range(n, n + min(n, 16)))
    res = {"config": path, "images": n, "rounds": rounds, "identical_items": same,
           **{f"{k}_ms_per_image": statistics.median(v) for k, v in ms.items()}}
    res["saved_ms_per_image"] = res["uncached_ms_per_image"] - res["cached_ms_per_image"]
    res["saved_s_per_step"] = res["saved_ms_per_image"] * cfg.train.batch_size / 1000
    return res


def markdown(res: dict) -> str:
    lines = [f"# Data pipeline: {res['device']}, {res['date']}, torch {res['torch']}", "",
             f"command: `{res['command']}`", "", f"environment: {run_env.describe(res.get('environment'))}", ""] + (
                 [f"note: {res['note']}", ""] if res.get("note") else [])
    lines += ["| config | images | uncached ms/image | cached ms/image | saved ms/image | saved s/step | identical |",
              "|---|---|---|---|---|---|---|"]
    for r in res["configs"]:
        lines.append(f"| {r['config']} | {r['images']} | {r['uncached_ms_per_image']:.2f} | "
                     f"{r['cached_ms_per_image']:.2f} | {r['saved_ms_per_image']:.2f} | {r['saved_s_per_step']:.3f} | "
                     f"{r['identical_items']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["configs/cpu/bccd_student.yaml", "configs/cpu/raccoon_student.yaml"])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--note", default="")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    date = dt.date.today().isoformat()
    res = {"device": run_env.device_name(), "date": date, "torch": torch.__version__, "note": args.note,
           "environment": run_env.environment(1),
           "command": shlex.join(["python", "benchmarks/data_speed.py", *sys.argv[1:]]), "configs": []}
    for c in args.configs:
        res["configs"].append(bench(c, args.rounds))
        print(json.dumps(res["configs"][-1]), flush=True)
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"data-speed-cpu-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    results_file.write_atomic(out, res)
    results_file.write_atomic(out.with_suffix(".md"), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
