"""Does a trained run's test AP depend on its BatchNorm running statistics? (a diagnostic for real-time students)

    python benchmarks/bn_stats_check.py runs/bench/bccd-rt_detr-cpu-2026-12-04/baseline-s0 \\
        runs/bench/bccd-rt_detr-cpu-2026-12-04/feature@deformable-s0 --out benchmarks/results/NAME.json

For each run folder of ``detrdistill train`` / ``distill`` (its ``config.yaml`` and ``model/``): the AP on ``--split``
as trained, then again after every BatchNorm layer's running mean / variance is recomputed from scratch on the
run's train split (train transforms, train-mode forward without gradients, a cumulative average over ``--passes``
passes; the weights are untouched). A large rise means the evaluation's running statistics did not describe the
features the model was trained on (a train / eval mismatch); no change means the statistics are not the cause.
Prints a Markdown table; ``--out`` also writes it as JSON and ``.md`` with the command and environment.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Iterable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/bn_stats_check.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import results_file, run_env  # noqa: E402


def batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """The model's BatchNorm layers that keep running statistics."""
    return [m for m in model.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_bn_stats(model: torch.nn.Module, forward, batches: Iterable) -> int:
    """Reset every BatchNorm layer's running statistics and re-estimate them as the cumulative average over
    ``forward(batch)`` calls in train mode (``momentum=None``). Restores each layer's momentum and the model's
    mode. Returns the number of batches seen; the weights are not changed."""
    layers = batch_norms(model)
    momenta = [m.momentum for m in layers]
    was_training = model.training
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    n = 0
    try:
        for batch in batches:
            forward(batch)
            n += 1
    finally:
        for m, mom in zip(layers, momenta):
            m.momentum = mom
        model.train(was_training)
    return n


def check_run(run: Path, split: str, passes: int, seed: int) -> dict:
    """AP / AP75 on ``split`` as trained and with BatchNorm statistics recomputed on the train split."""
    import logging

    from detrdistill.config import load_config
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.engine.evaluator import evaluate
    from detrdistill.engine.loading import eval_loader
    from detrdistill.engine.setup import make_accelerator
    from detrdistill.models.build import load_detector
    from detrdistill.models.families import get_adapter

    for need in (run / "config.yaml", run / "model"):
        if not need.exists():
            raise SystemExit(f"{run}: no {need.name} (give the folder of a finished train / distill run)")
    cfg = load_config(run / "config.yaml", ["train.progress=false"])
    split_cfg = getattr(cfg.data, split, None)
    if split_cfg is None:
        raise SystemExit(f"{run}/config.yaml: data.{split} is not set (choose --split val or test)")
    accelerator = make_accelerator(cfg)
    evaluated = build_dataset(split_cfg, cfg.data, train=False)
    train = build_dataset(cfg.data.train, cfg.data, train=True)
    model = load_detector(run / "model")
    adapter = get_adapter(model)
    logging.getLogger("detrdistill").setLevel(logging.WARNING)

    def ap() -> tuple[float, float]:
        adapter.eval()
        stats = evaluate(adapter, eval_loader(evaluated, collate_fn, cfg.train.batch_size, 0, 1, 0), evaluated,
                         accelerator, progress=False)
        return round(stats["AP"], 2), round(stats["AP75"], 2)

    layers = len(batch_norms(model))
    before = ap()
    if not layers:
        return {"run": run_env.relative(run), "bn_layers": 0, "AP": before[0], "AP75": before[1]}
    torch.manual_seed(seed)  # the train transforms' random draws
    batches = (b for _ in range(passes) for b in eval_loader(train, collate_fn, cfg.train.batch_size, 0, 1, 0))
    seen = recompute_bn_stats(model, lambda b: adapter(b["pixel_values"], b["pixel_mask"]), batches)
    after = ap()
    return {"run": run_env.relative(run), "bn_layers": layers, "batches": seen, "AP": before[0], "AP75": before[1],
            "AP_bn_recomputed": after[0], "AP75_bn_recomputed": after[1]}


def table(rows: list[dict], split: str) -> str:
    out = [f"| run | BatchNorm layers | {split} AP / AP75 as trained | with BN statistics recomputed | change |",
           "|---|---|---|---|---|"]
    for r in rows:
        if not r["bn_layers"]:
            out.append(f"| {r['run']} | 0 | {r['AP']} / {r['AP75']} | (no BatchNorm) | |")
            continue
        out.append(f"| {r['run']} | {r['bn_layers']} | {r['AP']} / {r['AP75']} | "
                   f"{r['AP_bn_recomputed']} / {r['AP75_bn_recomputed']} | {r['AP_bn_recomputed'] - r['AP']:+.2f} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders (config.yaml + model/)")
    p.add_argument("--split", default="test", help="the split to evaluate (default test)")
    p.add_argument("--passes", type=int, default=2, help="passes over the train split for the statistics")
    p.add_argument("--seed", type=int, default=0, help="seed of the train transforms' draws")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here and the table as .md beside it")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [check_run(r, args.split, args.passes, args.seed) for r in args.runs]
    text = table(rows, args.split)
    print(text)
    if args.out:
        command = " ".join(["python", "benchmarks/bn_stats_check.py", *run_env.portable_command(
            [str(a) for a in (argv if argv is not None else sys.argv[1:])])])
        env = run_env.environment(args.threads)
        results_file.write_atomic(args.out, {"command": command, "environment": env, "split": args.split,
                                             "rows": rows})
        results_file.write_atomic(args.out.with_suffix(".md"), f"# BatchNorm statistics check\n\ncommand: "
                                  f"`{command}`\n\nenvironment: {run_env.describe(env)}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
