"""Where does each DETRDistill term's gradient go, on a checkpoint of a ``detrdistill distill`` run? (a diagnostic)

    python benchmarks/term_gradients.py runs/bench/bccd-d_fine-frame-cpu-2026-12-05/detrdistill-s0 \\
        --checkpoint step-00002400 --batches 2 --top 8

Rebuilds the run's distiller from its ``config.yaml`` (teacher included), loads the checkpoint's weights (student
and connectors; ``checkpoints/<name>/weights.safetensors``), draws ``--batches`` training batches (train
transforms, a fixed seed) and prints, per term (``student`` = its own loss), the total gradient norm and the
``--top`` parameters it moves most, each beside the student's own gradient norm on that parameter. For a student
whose decoder predicts box distributions (D-FINE, DEIMv2) it also prints, per decoder layer, the mean probability
mass on the two outer bins and the entropy, for the student's own queries and for the query-prior group (the two
calls of each layer's distribution head in one step). ``--modules REGEX ...``: per batch, the cosine between each
term's gradient and the student's own over the parameters whose name matches each regex, and its norm ratio.
Nothing is written; the run folder is read only.
"""
from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/term_gradients.py` from anywhere
    sys.path.insert(0, str(ROOT))


def _distribution_stats(logits: torch.Tensor) -> tuple[float, float]:
    """[B, N, 4 * K] distribution logits -> (mean mass on the two outer bins, mean entropy) per edge."""
    B, N, D = logits.shape
    p = logits.reshape(B, N, 4, D // 4).softmax(-1)
    outer = (p[..., 0] + p[..., -1]).mean().item()
    entropy = -(p * p.clamp_min(1e-12).log()).sum(-1).mean().item()
    return outer, entropy


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", type=Path, help="a detrdistill distill run folder (config.yaml, checkpoints/)")
    p.add_argument("--checkpoint", default=None, help="checkpoint folder name (default: the last)")
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None, help="default: the run's train.batch_size")
    p.add_argument("--top", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--modules", nargs="*", default=[], metavar="REGEX",
                   help="parameter-name patterns: per batch, each term's cosine with the student's own gradient there")
    args = p.parse_args(argv)

    from safetensors.torch import load_file
    from torch.utils.data import DataLoader

    from detrdistill.config import load_config
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.distillation.task import DistillTask

    cks = sorted((args.run / "checkpoints").glob("step-*"))
    ck = args.run / "checkpoints" / args.checkpoint if args.checkpoint else (cks[-1] if cks else None)
    if ck is None or not (ck / "weights.safetensors").is_file():
        p.error(f"{args.run}: no checkpoint {args.checkpoint or '(none found)'} with weights.safetensors")
    cfg = load_config(args.run / "config.yaml", args.set)
    if cfg.distill.teacher is None:
        p.error(f"{args.run}/config.yaml: not a distillation run (distill.teacher unset)")
    ds = build_dataset(cfg.data.train, cfg.data, train=True)
    task = DistillTask.from_config(cfg, ds.id2label)
    state = {f"detr_distiller.{k}": v for k, v in load_file(ck / "weights.safetensors").items()}
    missing = set(state) - set(task.state_dict())
    if missing:
        p.error(f"{ck}: {len(missing)} checkpoint keys unknown to the rebuilt distiller, e.g. {sorted(missing)[0]}")
    task.load_state_dict(state, strict=False)
    dd = task.detr_distiller
    dd.train()

    decoder = getattr(getattr(dd.student_model, "model", None), "decoder", None)
    heads = getattr(decoder, "bbox_embed", None) if hasattr(decoder, "integral") else None
    calls: list[tuple[int, torch.Tensor]] = []
    if heads is not None:
        for i, h in enumerate(heads):
            h.register_forward_hook(lambda m, a, o, i=i: calls.append((i, o.detach())))

    random.seed(args.seed)
    torch.manual_seed(args.seed)
    loader = DataLoader(ds, batch_size=args.batch_size or cfg.train.batch_size, shuffle=True, collate_fn=collate_fn,
                        generator=torch.Generator().manual_seed(args.seed))
    params = list(dd.named_trainable_parameters())
    sq: dict[str, dict[str, float]] = {}
    cosines: dict[tuple[str, str], list[str]] = {}
    # --modules: the parameters each pattern names (fixed), and of those only, flattened gradients kept per batch
    module_names = {pattern: [n for n, _ in params if re.search(pattern, n)] for pattern in args.modules}
    kept = {n for names in module_names.values() for n in names}
    for _, batch in zip(range(args.batches), loader):
        out = dd(batch["pixel_values"], pixel_mask=batch.get("pixel_mask"), labels=batch["labels"])
        print("losses:", {k: round(float(v), 3) for k, v in out.losses.items()})
        flat: dict[str, dict[str, torch.Tensor]] = {}
        for part, value in out.parts.items():
            grads = torch.autograd.grad(value, [q for _, q in params], retain_graph=True, allow_unused=True)
            for (name, q), g in zip(params, grads):
                if g is not None:
                    sq.setdefault(part, {}).setdefault(name, 0.0)
                    sq[part][name] += float(g.norm() ** 2)
                if name in kept:
                    flat.setdefault(part, {})[name] = (g if g is not None else torch.zeros_like(q)).flatten()
        for pattern, names in module_names.items():
            if not names or "student" not in flat:
                continue
            own_g = torch.cat([flat["student"][n] for n in names])
            for part in flat:
                if part != "student":
                    g = torch.cat([flat[part][n] for n in names])
                    cos = torch.nn.functional.cosine_similarity(own_g, g, dim=0).item()
                    ratio = (g.norm() / own_g.norm().clamp_min(1e-12)).item()
                    cosines.setdefault((pattern, part), []).append(f"cos {cos:+.2f}, {ratio:.2f}x")
    own = sq.get("student", {})
    for part, per in sq.items():
        total = sum(per.values()) ** 0.5
        print(f"\n{part}: gradient norm {total:.3f} (over {args.batches} batches)")
        for name, v in sorted(per.items(), key=lambda kv: -kv[1])[:args.top]:
            print(f"  {v ** 0.5:9.3f}  (own {own.get(name, 0.0) ** 0.5:8.3f})  {name}")
    for (pattern, part), per_batch in cosines.items():
        print(f"\n{part} vs the student's own on /{pattern}/ (per batch): " + "; ".join(per_batch))
    if calls:
        layers = len(heads)
        print("\nbox distributions (per layer: outer-bin mass, entropy); calls in order: own queries, then the group")
        for k, (layer, logits) in enumerate(calls[:2 * layers]):
            who = "own  " if k < layers else "group"
            outer, ent = _distribution_stats(logits)
            print(f"  {who} layer {layer}: outer-bin mass {outer:.3f}, entropy {ent:.2f}, queries {logits.shape[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
