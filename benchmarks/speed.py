"""Speed benchmark: seconds per training step and matcher time, in one run on one device.

    python benchmarks/speed.py                          # teacher + student configs of bccd, this device
    python benchmarks/speed.py --configs configs/raccoon_teacher.yaml --batch-size 8 --steps 10

Per config, on the same batch: the bare model forward+backward (no loss), with transformers' own loss,
with our criterion (adapter + SetCriterion), and the full engine step (data loading, model, our
criterion, optimizer, grad clipping) measured on a real DataLoader. Matching: 16 images x 6 stages x
300 queries x 300 targets, batched vs a per-image scipy loop vs transformers' matcher. Peak GPU memory. ``engine_step_s``: seconds per step of the
real training loop (``run_training``) across 3 epoch boundaries, next to the isolated ``full_step_s``.
Results: ``benchmarks/results/speed-<device>-<date>.json`` and ``.md``.
"""
from __future__ import annotations

import argparse
import contextlib
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

from detrdistill.config import load_config  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_config(path: str, device: torch.device, batch_size: int | None, steps: int, overrides: list[str]) -> dict:
    from detrdistill.data import collate_fn
    from detrdistill.engine.loading import train_loader
    from detrdistill.engine.optim import build_optimizer
    from detrdistill.engine.tasks import build_criterion, move_targets
    from detrdistill.engine.setup import build_datasets, make_accelerator
    from detrdistill.models.adapters import get_adapter
    from detrdistill.models.build import build_model, count_parameters

    cfg = load_config(path, overrides + ([f"train.batch_size={batch_size}"] if batch_size else []))
    # one image size and no crop, so every batch of the full-step loop has the shape the bare step timed
    cfg.data = cfg.data.model_copy(update={"min_size": [max(cfg.data.min_size)], "crop": 0.0})
    acc = make_accelerator(cfg)
    train_ds, _ = build_datasets(cfg, acc)
    model = build_model(cfg.model, train_ds.id2label).to(device)
    adapter = get_adapter(model)
    crit = build_criterion(cfg, adapter)
    opt = build_optimizer(adapter, cfg.optim)
    loader, _ = train_loader(train_ds, collate_fn, cfg.train.batch_size, 0, 0, 1, cfg.data.num_workers)
    batch = next(iter(loader))
    pv, pm = batch["pixel_values"].to(device), batch["pixel_mask"].to(device)
    targets = move_targets(batch["labels"], device)
    amp = cfg.train.mixed_precision == "bf16" and device.type == "cuda"
    ctx = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else contextlib.nullcontext

    def bare():
        with ctx():
            out = model(pixel_values=pv, pixel_mask=pm)
            loss = out.logits.float().sum() + out.pred_boxes.float().sum()
        loss.backward()
        opt.zero_grad(set_to_none=True)

    def hf_loss():
        model.config.auxiliary_loss = True
        try:
            with ctx():
                out = model(pixel_values=pv, pixel_mask=pm, labels=targets)
            out.loss.backward()
        finally:
            model.config.auxiliary_loss = False
        opt.zero_grad(set_to_none=True)

    def ours():
        with ctx():
            out = adapter(pv, pm, targets=targets, criterion=crit)
        out.loss.backward()
        opt.zero_grad(set_to_none=True)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    res = {"config": path, "params": count_parameters(model).total, "batch_size": cfg.train.batch_size,
           "image_shape": list(pv.shape[-2:]), "mixed_precision": "bf16" if amp else "no"}
    res["bare_fwd_bwd_s"] = _time(bare, device, steps)
    try:
        res["transformers_loss_s"] = _time(hf_loss, device, steps)
    except Exception as e:  # some families' HF losses need inputs we do not build
        res["transformers_loss_s"] = None
        res["transformers_loss_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    res["ours_s"] = _time(ours, device, steps)

    # full engine step: loader (its workers), model, criterion, optimizer, clipping
    it = iter(loader)  # endless

    def full_step():
        b = next(it)
        x, m = b["pixel_values"].to(device, non_blocking=True), b["pixel_mask"].to(device, non_blocking=True)
        t = move_targets(b["labels"], device)
        with ctx():
            out = adapter(x, m, targets=t, criterion=crit)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(adapter.parameters(), cfg.optim.grad_clip or 1e9)
        opt.step()
        opt.zero_grad(set_to_none=True)

    res["full_step_s"] = _time(full_step, device, steps)
    res["full_over_bare"] = res["full_step_s"] / res["bare_fwd_bwd_s"]
    res["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    del acc
    return res


def engine_step(path: str, batch_size: int | None, overrides: list[str], boundaries: int = 3,
                warmup: int = 10) -> dict:
    """Seconds per step of the real training loop (``run_training``: loader workers, model, criterion,
    optimizer, logging, checkpoints) between step ``warmup`` and the end of ``boundaries`` more epochs,
    on the same data settings as the isolated steps (one image size, no crop), evaluation off."""
    import tempfile

    from detrdistill.engine.metrics import read_metrics
    from detrdistill.engine.trainer import run_training

    cfg = load_config(path, overrides + ([f"train.batch_size={batch_size}"] if batch_size else []))
    cfg.data = cfg.data.model_copy(update={"min_size": [max(cfg.data.min_size)], "crop": 0.0})
    with tempfile.TemporaryDirectory() as tmp:
        probe = cfg.model_copy(deep=True)
        from detrdistill.engine.trainer import build_datasets, make_accelerator
        n_train = len(build_datasets(probe, make_accelerator(probe))[0])
        per_epoch = n_train // cfg.train.batch_size
        steps = warmup + boundaries * per_epoch + 1
        cfg.train = cfg.train.model_copy(update={"output_dir": tmp, "max_steps": steps, "epochs": None,
                                                 "time_budget_min": None, "eval_every_epochs": 0, "log_every": 1,
                                                 "progress": False})
        cfg.data = cfg.data.model_copy(update={"val": None, "test": None})
        run_training(cfg, mode="train")
        times = {r["step"]: r["time_s"] for r in read_metrics(f"{tmp}/metrics.jsonl") if "time_s" in r}
    return {"engine_step_s": (times[steps] - times[warmup]) / (steps - warmup), "engine_steps_timed": steps - warmup,
            "epoch_boundaries_crossed": boundaries, "steps_per_epoch": per_epoch}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", nargs="+", default=["configs/bccd_teacher.yaml", "configs/bccd_student.yaml"])
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--match", nargs=4, type=int, default=[16, 6, 300, 300], metavar=("B", "L", "N", "T"))
    p.add_argument("--out", default=None)
    args = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from benchmarks.distill import device_name
    from benchmarks.bench_matching import benchmark_matching

    date = dt.date.today().isoformat()
    res = {"device": device_name(), "date": date, "torch": torch.__version__,
           "command": shlex.join(["python", "benchmarks/speed.py", *sys.argv[1:]]), "models": []}
    for c in args.configs:
        res["models"].append(bench_config(c, device, args.batch_size, args.steps, args.set))
        res["models"][-1].update(engine_step(c, args.batch_size, args.set))
        res["models"][-1]["engine_over_full"] = res["models"][-1]["engine_step_s"] / res["models"][-1]["full_step_s"]
        print(json.dumps(res["models"][-1]), flush=True)
    B, L, N, T = args.match
    res["matching"] = benchmark_matching(B=B, L=L, N=N, T=T, device=device)
    print(json.dumps(res["matching"]), flush=True)
    tag = "gpu" if device.type == "cuda" else "cpu"
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"speed-{tag}-{date}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    lines = [f"# Speed: {res['device']}, {date}, torch {res['torch']}", "", f"command: `{res['command']}`", "",
             "| config | params | batch | image | bare fwd+bwd s | + transformers loss s | + our criterion s | "
             "full step s | full / bare | engine step s | engine / full | peak GPU GB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in res["models"]:
        hf = f"{m['transformers_loss_s']:.4f}" if m["transformers_loss_s"] else "n/a"
        mem = f"{m['peak_gpu_mem_gb']:.2f}" if m["peak_gpu_mem_gb"] else "n/a"
        lines.append(f"| {m['config']} | {m['params'] / 1e6:.1f} M | {m['batch_size']} | {m['image_shape']} | "
                     f"{m['bare_fwd_bwd_s']:.4f} | {hf} | {m['ours_s']:.4f} | {m['full_step_s']:.4f} | "
                     f"{m['full_over_bare']:.2f} | {m['engine_step_s']:.4f} | {m['engine_over_full']:.2f} | {mem} |")
    mt = res["matching"]
    lines += ["", f"Matching {B} images x {L} stages x {N} queries x {T} targets (ms, median):", "",
              "| ours batched | per-image scipy loop | transformers matcher | speed-up vs loop |", "|---|---|---|---|",
              f"| {mt['ours_batched']:.1f} | {mt['per_image_scipy']:.1f} | {mt.get('transformers') or float('nan'):.1f} | "
              f"{mt['per_image_scipy'] / mt['ours_batched']:.1f}x |"]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
