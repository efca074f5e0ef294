"""Per-class AP: from COCOeval's precision array into the stats, eval.json and the printout."""
from __future__ import annotations

import json

import pytest

from detrdistill.engine.evaluator import STAT_KEYS, coco_stats, write_eval_json
from detrdistill.engine.per_class import format_per_class
from tests.test_engine_units import _fixture_gt


def _perfect(gt):
    return [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in gt.dataset["annotations"]]


def test_per_class_ap_drops_only_for_the_damaged_class(tmp_path):
    gt = _fixture_gt()
    names = {c["id"]: c["name"] for c in gt.dataset["categories"]}
    dets = _perfect(gt)
    assert all(coco_stats(gt, dets)[f"AP/{n}"] == pytest.approx(100.0) for n in names.values())
    damaged = min(names)
    shifted = [dict(d, bbox=[d["bbox"][0] + 0.5 * d["bbox"][2], *d["bbox"][1:]]) if d["category_id"] == damaged else d
               for d in dets]
    stats = coco_stats(gt, shifted)
    assert stats[f"AP/{names[damaged]}"] < 60.0
    assert all(stats[f"AP/{n}"] == pytest.approx(100.0) for c, n in names.items() if c != damaged)
    # the overall AP is the mean of the per-class APs
    assert stats["AP"] == pytest.approx(sum(stats[f"AP/{n}"] for n in names.values()) / len(names), abs=1e-6)

    write_eval_json(tmp_path / "eval.json", stats, {"split": "val"})
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert set(STAT_KEYS) <= set(saved) and saved["split"] == "val"
    assert saved["per_class_AP"] == {n: stats[f"AP/{n}"] for n in names.values()}
    table = format_per_class(stats)
    assert all(n in table for n in names.values()) and f"{stats[f'AP/{names[damaged]}']:6.2f}" in table


def test_faster_coco_eval_gives_the_same_per_class_ap():
    pytest.importorskip("faster_coco_eval")
    gt = _fixture_gt(seed=3)
    dets = [dict(d, bbox=[d["bbox"][0] + 2.0 * (i % 3), *d["bbox"][1:]], score=0.5 + 0.01 * (i % 7))
            for i, d in enumerate(_perfect(gt))]
    a, b = coco_stats(gt, dets, "pycocotools"), coco_stats(gt, dets, "faster_coco_eval")
    per_class = [k for k in a if k.startswith("AP/")]
    assert per_class and all(a[k] == pytest.approx(b[k], abs=1e-6) for k in per_class)
