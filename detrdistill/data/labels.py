"""Training labels given to the Python API, turned into the targets every loss reads.

``labels`` is a list with one entry per image of the batch, in one of two formats:

* **transformers** (what its image processors return for ``annotations=...`` and what
  ``*ForObjectDetection(labels=...)`` takes): a dict with ``class_labels`` (int [T], the 0-based label index) and
  ``boxes`` (float [T, 4], (cx, cy, w, h) divided by the image's width / height, so in [0, 1]). Other keys
  (``image_id``, ``area``, ``orig_size`` ...) are kept as they are. A processor that pads (``do_pad``) divides
  the boxes by the PADDED size instead, and says so in the label's ``size`` (the padded height, width): the Python
  API takes those back to fractions of each image's real pixels, the frame every loss here reads
  (:func:`detrdistill.models.adapters.base.padded_targets_to_real_frame`).
* **COCO**: a list of COCO annotation dicts with ``bbox`` [x, y, w, h] in pixels and ``category_id`` (``iscrowd``
  optional), or the image processors' input form ``{"image_id": ..., "annotations": [...]}``. Converting needs
  ``image_sizes``: each image's (height, width) in the pixels its ``bbox`` values use (the image as the annotation
  file describes it, before any resizing: boxes are normalised, so resizing and bottom / right padding do not
  change them). ``category_ids[label]`` is the COCO category id of each label (None: the ``category_id`` is the
  label index itself). Crowd annotations (``iscrowd`` = 1) are dropped; boxes are clipped to the image and those
  left without area are dropped, as the project's COCO loader and transformers' DETR processors do.

Both become the transformers format on the batch's device (:func:`to_targets`).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ..errors import LabelsError

__all__ = ["coco_to_labels", "to_targets", "is_coco_format"]

BOX_TOLERANCE = 1e-3  # normalised boxes a processor produced may overshoot [0, 1] by rounding


def _coco_list(entry: Any) -> list | None:
    """The COCO annotation list of one image's entry, or None when the entry is not COCO-shaped."""
    if isinstance(entry, Mapping) and "annotations" in entry and "class_labels" not in entry:
        entry = entry["annotations"]
    if isinstance(entry, (list, tuple)) and all(isinstance(a, Mapping) for a in entry):
        return list(entry)
    return None


def is_coco_format(labels: Sequence) -> bool:
    """True when every entry is a COCO annotation list (or ``{"annotations": [...]}``); False when every entry is
    a transformers target dict; :class:`LabelsError` for anything else or a mix."""
    kinds = set()
    for i, entry in enumerate(labels):
        if isinstance(entry, Mapping) and "class_labels" in entry and "boxes" in entry:
            kinds.add("transformers")
        elif _coco_list(entry) is not None:
            kinds.add("coco")
        else:
            raise LabelsError(f"labels[{i}]: expected a dict with 'class_labels' and 'boxes' (transformers format) "
                              f"or a list of COCO annotations with 'bbox' and 'category_id', got {type(entry).__name__}")
    if len(kinds) > 1:
        raise LabelsError("labels mix the transformers format and the COCO format; give every image in one format")
    return kinds == {"coco"}


def _sizes(image_sizes: Any, n: int) -> list[tuple[float, float]]:
    if image_sizes is None:
        raise LabelsError("labels in COCO format need image_sizes: each image's (height, width) in the pixels its "
                          "'bbox' values use (e.g. the 'height' / 'width' of its COCO image entry)")
    sizes = image_sizes.tolist() if isinstance(image_sizes, Tensor) else list(image_sizes)
    if len(sizes) != n or not all(isinstance(s, (Sequence, Tensor)) and len(s) == 2 for s in sizes):
        raise LabelsError(f"image_sizes must hold one (height, width) per image: {n} expected, got {image_sizes!r}")
    out = [(float(h), float(w)) for h, w in sizes]
    if any(h <= 0 or w <= 0 for h, w in out):
        raise LabelsError(f"image_sizes must be positive (height, width) pairs, got {sizes!r}")
    return out


def coco_to_labels(annotations: Sequence, image_sizes: Any, category_ids: Sequence[int] | None = None,
                   num_classes: int | None = None) -> list[dict[str, Tensor]]:
    """COCO annotations of B images -> B transformers targets (``class_labels`` [T], ``boxes`` [T, 4] normalised
    cxcywh, ``orig_size`` [2] = (height, width)).

    annotations: per image, a list of COCO annotation dicts (``bbox`` [x, y, w, h] in pixels, ``category_id``,
    optional ``iscrowd``) or ``{"image_id": ..., "annotations": [...]}``; image_sizes: per image its (height,
    width) in the pixels ``bbox`` uses (a [B, 2] tensor or a list of pairs); category_ids: the COCO category id of
    each label (label ``i`` is ``category_ids[i]``), None when category ids are the label indices; num_classes:
    when given, every label must be below it.
    """
    lists = []
    for i, entry in enumerate(annotations):
        anns = _coco_list(entry)
        if anns is None:
            raise LabelsError(f"labels[{i}]: not a list of COCO annotations (dicts with 'bbox' and 'category_id')")
        lists.append(anns)
    has_boxes = any(lists)
    sizes = _sizes(image_sizes, len(lists)) if has_boxes or image_sizes is not None else [(0.0, 0.0)] * len(lists)
    cat2label = {int(c): i for i, c in enumerate(category_ids)} if category_ids is not None else None
    out = []
    for i, (anns, (h, w)) in enumerate(zip(lists, sizes)):
        boxes, classes = [], []
        for a in anns:
            if a.get("iscrowd", 0):
                continue
            if "bbox" not in a or "category_id" not in a:
                raise LabelsError(f"labels[{i}]: a COCO annotation needs 'bbox' and 'category_id', got keys "
                                  f"{sorted(a)}")
            x, y, bw, bh = (float(v) for v in a["bbox"])
            x0, y0 = min(max(x, 0.0), w), min(max(y, 0.0), h)
            x1, y1 = min(max(x + bw, 0.0), w), min(max(y + bh, 0.0), h)
            if x1 <= x0 or y1 <= y0:
                continue
            boxes.append(((x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
            classes.append(_label_of(a["category_id"], cat2label, num_classes, i))
        out.append({"class_labels": torch.tensor(classes, dtype=torch.long),
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "orig_size": torch.tensor([int(h), int(w)], dtype=torch.long)})
    return out


def _label_of(category_id: Any, cat2label: dict[int, int] | None, num_classes: int | None, i: int) -> int:
    cid = int(category_id)
    if cat2label is not None:
        if cid not in cat2label:
            raise LabelsError(f"labels[{i}]: category_id {cid} is not among category_ids {sorted(cat2label)} (the "
                              "COCO id of each student label); add it or drop those annotations")
        return cat2label[cid]
    if num_classes is not None and not 0 <= cid < num_classes:
        raise LabelsError(f"labels[{i}]: category_id {cid} is not a label index of the student (0..{num_classes - 1}); "
                          "pass category_ids=[the COCO id of label 0, of label 1, ...]")
    return cid


def _as_target(t: Mapping, i: int) -> dict[str, Any]:
    """One transformers target with ``boxes`` float [T, 4] and ``class_labels`` long [T] (shapes checked)."""
    out = dict(t)
    try:
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32)
        classes = torch.as_tensor(t["class_labels"], dtype=torch.long)
    except (TypeError, ValueError) as e:
        raise LabelsError(f"labels[{i}]: 'boxes' / 'class_labels' are not numbers ({e})") from None
    boxes = boxes.reshape(-1, 4) if boxes.numel() == 0 else boxes
    if boxes.dim() != 2 or boxes.shape[-1] != 4 or classes.reshape(-1).shape[0] != boxes.shape[0]:
        raise LabelsError(f"labels[{i}]: 'boxes' must be [T, 4] with one 'class_labels' entry per box, got "
                          f"{tuple(boxes.shape)} and {tuple(classes.shape)}")
    out["boxes"], out["class_labels"] = boxes, classes.reshape(-1)
    return out


def _out_of_range(t: Mapping, num_classes: int | None) -> bool:
    b, c = t["boxes"], t["class_labels"]
    bad_box = bool(b.numel()) and bool((b < -BOX_TOLERANCE).any() or (b > 1 + BOX_TOLERANCE).any())
    return bad_box or (num_classes is not None and bool(c.numel()) and bool(((c < 0) | (c >= num_classes)).any()))


def _check_ranges(targets: list[dict[str, Any]], num_classes: int | None) -> None:
    """Boxes in [0, 1] and labels below ``num_classes``, for the whole batch in one device synchronisation; the
    image at fault is looked for only when something is wrong."""
    boxes = torch.cat([t["boxes"].reshape(-1) for t in targets]) if targets else torch.zeros(0)
    classes = torch.cat([t["class_labels"] for t in targets]) if targets else torch.zeros(0, dtype=torch.long)
    if not boxes.numel():
        return
    lo, hi, cmin, cmax = torch.stack([boxes.min(), boxes.max(), classes.min().float(), classes.max().float()]).tolist()
    if lo >= -BOX_TOLERANCE and hi <= 1 + BOX_TOLERANCE and (num_classes is None or (cmin >= 0 and cmax < num_classes)):
        return
    i = next(i for i, t in enumerate(targets) if _out_of_range(t, num_classes))
    b, c = targets[i]["boxes"], targets[i]["class_labels"]
    if b.numel() and (b.min() < -BOX_TOLERANCE or b.max() > 1 + BOX_TOLERANCE):
        raise LabelsError(f"labels[{i}]: 'boxes' hold values outside [0, 1] (max {b.max().item():.1f}); the "
                          "transformers format is (cx, cy, w, h) divided by the image size: give pixel boxes in COCO "
                          "format with image_sizes instead")
    raise LabelsError(f"labels[{i}]: class_labels must be label indices 0..{num_classes - 1}, got "
                      f"{sorted(set(c.tolist()))[:8]}")


def to_targets(labels: Sequence, image_sizes: Any = None, category_ids: Sequence[int] | None = None,
               num_classes: int | None = None, batch_size: int | None = None,
               device: torch.device | str | None = None) -> list[dict[str, Any]]:
    """Labels in either format (see the module docstring) -> transformers targets on ``device``, checked: one per
    image (``batch_size``), labels below ``num_classes``, boxes normalised."""
    if labels is None:
        raise LabelsError("labels are required to distil (the losses match predictions to them); pass labels=")
    if isinstance(labels, Mapping) or not isinstance(labels, Sequence):
        raise LabelsError(f"labels must be a list with one entry per image, got {type(labels).__name__}")
    if batch_size is not None and len(labels) != batch_size:
        raise LabelsError(f"labels hold {len(labels)} entries for a batch of {batch_size} images (one per image)")
    if is_coco_format(labels):
        targets = coco_to_labels(labels, image_sizes, category_ids, num_classes)
    else:
        targets = [_as_target(t, i) for i, t in enumerate(labels)]
        _check_ranges(targets, num_classes)
    return [{k: (v.to(device, non_blocking=True) if isinstance(v, Tensor) and device is not None else v)
             for k, v in t.items()} for t in targets]
