"""COCO evaluation: post-processing of detector outputs and the 12 COCO bbox statistics."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detrdistill.engine.per_class import per_class_ap, per_class_from_stats
from detrdistill.models.families import DETECTIONS_PER_IMAGE
from detrdistill.models.outputs import class_probs
from detrdistill.ops.boxes import cxcywh_to_xyxy

STAT_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def postprocess(logits: Tensor, boxes: Tensor, orig_sizes: Tensor, activation: str = "sigmoid",
                top_k: int = DETECTIONS_PER_IMAGE) -> list[dict[str, Tensor]]:
    """Final-stage outputs -> detections in original-image pixels.

    logits [B, N, C'] , boxes [B, N, 4] normalised cxcywh, orig_sizes [B, 2] (h, w).
    sigmoid: top-k over all (query, class) pairs (Deformable DETR); softmax: best real class per query.
    Returns per image dict(scores [K], labels [K] (contiguous), boxes [K, 4] absolute xyxy).
    """
    prob = class_probs(logits.float(), activation)
    b, n, c = prob.shape
    if activation == "softmax":
        scores, labels = prob.max(-1)
        qidx = torch.arange(n, device=prob.device).expand(b, n)
        k = min(top_k, n)
        scores, order = scores.topk(k, dim=1)
        labels, qidx = labels.gather(1, order), qidx.gather(1, order)
    else:
        k = min(top_k, n * c)
        scores, flat = prob.reshape(b, -1).topk(k, dim=1)
        qidx, labels = flat // c, flat % c
    xyxy = cxcywh_to_xyxy(boxes.float()).gather(1, qidx.unsqueeze(-1).expand(-1, -1, 4))
    h, w = orig_sizes.float().unbind(-1)
    scale = torch.stack([w, h, w, h], -1).unsqueeze(1)
    xyxy = xyxy * scale
    return [{"scores": s, "labels": lab, "boxes": bx} for s, lab, bx in zip(scores, labels, xyxy)]


def to_coco_results(dets: list[dict[str, Tensor]], image_ids: list[int], label2cat: dict[int, int]) -> list[dict]:
    """Detections -> COCO result dicts (xywh boxes, original category ids)."""
    out = []
    for det, img_id in zip(dets, image_ids):
        bx = det["boxes"].detach().cpu().numpy()
        xywh = np.concatenate([bx[:, :2], bx[:, 2:] - bx[:, :2]], 1)
        for s, lab, box in zip(det["scores"].tolist(), det["labels"].tolist(), xywh.tolist()):
            out.append({"image_id": int(img_id), "category_id": int(label2cat[int(lab)]),
                        "bbox": [round(v, 3) for v in box], "score": round(float(s), 5)})
    return out


def coco_stats(coco_gt, results: list[dict], backend: str = "pycocotools",
               image_ids: list[int] | None = None) -> dict[str, float]:
    """The 12 COCO bbox statistics in percent (AP 0..100). ``backend``: pycocotools | faster_coco_eval.
    ``image_ids``: score only these images of ``coco_gt`` (default: all of them).

    A statistic COCO cannot define (its -1: no ground truth in that area range, e.g. ``APs`` of a set without small
    objects) is left out, as the per-class AP of a class without ground truth is; ``eval.json`` writes it as null.
    No detections at all score 0 where there is ground truth, and stay undefined where there is none."""
    with contextlib.redirect_stdout(io.StringIO()):
        if backend == "faster_coco_eval":
            from faster_coco_eval import COCO, COCOeval_faster as COCOeval
            gt = COCO(copy.deepcopy(coco_gt.dataset))
        else:
            from pycocotools.coco import COCO
            from pycocotools.cocoeval import COCOeval
            gt = coco_gt
        dt = gt.loadRes(copy.deepcopy(results)) if results else _no_detections(COCO, gt)
        ev = COCOeval(gt, dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(int(i) for i in image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {**{k: float(v) * 100.0 for k, v in zip(STAT_KEYS, ev.stats) if v >= 0}, **per_class_ap(ev)}


def _no_detections(coco_cls, gt):
    """An empty result set over ``gt``'s images and categories (``loadRes`` cannot build one from no results)."""
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]),  # read only: indexing needs the ids, not copies
                  "categories": list(gt.dataset.get("categories", [])), "annotations": []}
    dt.createIndex()
    return dt


@torch.no_grad()
def evaluate(adapter, loader, dataset, accelerator, progress: bool = True, desc: str = "eval") -> dict[str, float]:
    """Run ``adapter`` over ``loader`` (sharded across processes), gather and score on rank 0.

    Every process returns the same stats dict.
    """
    from accelerate.utils import broadcast_object_list, gather_object
    from detrdistill.progress import progress_bar

    was_training = adapter.training
    adapter.eval()
    results = []
    it = progress_bar(loader, desc=desc, disable=not (progress and accelerator.is_main_process), leave=False)
    for batch in it:
        pv = batch["pixel_values"].to(accelerator.device)
        pm = batch["pixel_mask"].to(accelerator.device)
        # float32 even when training runs under bf16 / fp16 autocast: boxes rounded to bf16 (steps of ~2.5 px on a
        # 640-px image) cost AP on their own (perfect boxes: AP 100 -> 98.7 on bccd val) and tie scores
        out = adapter(pv, pm)
        sizes = torch.stack([t["orig_size"] for t in batch["labels"]]).to(pv.device)
        dets = postprocess(out.logits[-1], out.boxes[-1], sizes, out.class_activation)
        results.extend(to_coco_results(dets, [int(t["image_id"]) for t in batch["labels"]], dataset.label2cat))
    adapter.train(was_training)
    if accelerator.num_processes > 1:
        results = gather_object(results)
    stats = [coco_stats(dataset.coco_gt, results) if accelerator.is_main_process else None]
    if accelerator.num_processes > 1:
        broadcast_object_list(stats)
    return stats[0]


def write_eval_json(path: str | Path, stats: dict[str, float], extra: dict | None = None) -> None:
    """``eval.json``: the 12 COCO stats (null where COCO cannot define one), the per-class APs and ``extra``, written
    atomically."""
    from detrdistill.io_atomic import write_atomic
    coco = {k: stats.get(k) for k in STAT_KEYS}
    write_atomic(path, json.dumps({**coco, **per_class_from_stats(stats), **(extra or {})}, indent=1))
