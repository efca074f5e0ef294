"""Per-class COCO AP from a finished ``COCOeval`` (its ``eval["precision"]`` array)."""
from __future__ import annotations

import numpy as np

PREFIX = "AP/"  # per-class keys in a stats dict: "AP/<class name>"


def per_class_ap(cocoeval) -> dict[str, float]:
    """AP@[.50:.95] (percent) of each category, area 'all', 100 detections: ``{"AP/<name>": ap}``.

    ``precision`` is [T iou thresholds, R recall points, K categories, A areas, M max-dets] with -1
    where a category has no ground truth; such categories are left out.
    """
    precision = np.asarray(cocoeval.eval["precision"])
    cat_ids = list(cocoeval.params.catIds)
    names = {c["id"]: c["name"] for c in cocoeval.cocoGt.loadCats(cat_ids)}
    out = {}
    for k, cat in enumerate(cat_ids):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        if p.size:
            out[f"{PREFIX}{names.get(cat, cat)}"] = float(p.mean()) * 100.0
    return out


def per_class_from_stats(stats: dict[str, float]) -> dict[str, dict[str, float]]:
    """``{"per_class_AP": {name: ap}}`` for eval.json (empty dict when there are none)."""
    classes = {k[len(PREFIX):]: v for k, v in stats.items() if k.startswith(PREFIX)}
    return {"per_class_AP": classes} if classes else {}


def format_per_class(stats: dict[str, float]) -> str:
    """A small table for the log: one ``name  AP`` line per class."""
    classes = per_class_from_stats(stats).get("per_class_AP", {})
    if not classes:
        return "per-class AP: none (no category with ground truth)"
    width = max(len(n) for n in classes)
    return "per-class AP:\n" + "\n".join(f"  {n:<{width}}  {ap:6.2f}" for n, ap in classes.items())
