"""Box format conversion and (generalised) IoU, batched over any leading dimensions.

Formats: ``cxcywh`` = (centre x, centre y, width, height), ``xyxy`` = (x0, y0, x1, y1).  Boxes in this package are
normalised to [0, 1] but nothing here depends on that.

Numerical safety: widths/heights are clamped at 0 when computing areas (a box with x1 < x0 has area 0, not a negative
one), and every division is by ``max(denominator, eps)``.  So degenerate (zero-area) boxes give finite values and
finite gradients:

* IoU of two boxes whose union is 0 (both zero-area) is 0 (not nan);
* GIoU of two boxes whose smallest enclosing box has area 0 (e.g. two identical points) is 0 (not nan).

For boxes with union and enclosing area above ``eps`` the results are exactly the textbook formulas (the eps never
enters), so they agree with ``transformers.loss.loss_for_object_detection.generalized_box_iou`` to the last bit for
well-formed boxes.  Unlike that function, nothing here raises on malformed boxes: a training step must not crash
because one prediction degenerated.
"""
from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-7


def cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(cx, cy, w, h) -> (x0, y0, x1, y1).  boxes: [..., 4] -> [..., 4]."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h), dim=-1)


def xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(x0, y0, x1, y1) -> (cx, cy, w, h).  boxes: [..., 4] -> [..., 4]."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack(((x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0), dim=-1)


def box_area(boxes: Tensor) -> Tensor:
    """Area of xyxy boxes [..., 4] -> [...]; negative extents count as 0."""
    wh = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0)
    return wh[..., 0] * wh[..., 1]


def _upcast(t: Tensor) -> Tensor:
    # half precision products of areas lose too much; compute in fp32 at least
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _pairwise_terms(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """a [..., N, 4], b [..., M, 4] xyxy -> (inter, union, enclose), each [..., N, M].

    Works coordinate by coordinate, so no [..., N, M, 2] intermediates are built (this is the matcher's hot spot);
    every value is computed with the same operations, in the same order, as the textbook / transformers formula.
    """
    a, b = _upcast(a), _upcast(b)
    # contiguous per-coordinate planes: broadcasting from strided views is ~10x slower on the CPU
    ax0, ay0, ax1, ay1 = (t[..., :, None] for t in a.movedim(-1, 0).contiguous())  # [..., N, 1]
    bx0, by0, bx1, by1 = (t[..., None, :] for t in b.movedim(-1, 0).contiguous())  # [..., 1, M]
    area_a = (ax1 - ax0).clamp(min=0) * (ay1 - ay0).clamp(min=0)
    area_b = (bx1 - bx0).clamp(min=0) * (by1 - by0).clamp(min=0)
    inter = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp(min=0) \
        * (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp(min=0)
    union = (area_a + area_b) - inter
    enclose = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)).clamp(min=0) \
        * (torch.maximum(ay1, by1) - torch.minimum(ay0, by0)).clamp(min=0)
    return inter, union, enclose


def box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of xyxy boxes.

    a: [..., N, 4], b: [..., M, 4] (leading dims broadcast) -> (iou [..., N, M], union [..., N, M]).
    ``union`` is the raw union area (not clamped); ``iou = inter / max(union, eps)``.
    """
    inter, union, _ = _pairwise_terms(a, b)
    return inter / union.clamp(min=eps), union


def generalized_box_iou(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Pairwise generalised IoU of xyxy boxes, in [-1, 1].

    a: [..., N, 4], b: [..., M, 4] (leading dims broadcast) -> [..., N, M].
    ``giou = iou - (enclose - union) / max(enclose, eps)``.
    Without autograd (e.g. in the matcher) a version with few, reused [..., N, M] buffers runs (same values).
    """
    if not (torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)):
        return _generalized_box_iou_nograd(a, b, eps)
    inter, union, enclose = _pairwise_terms(a, b)
    return inter / union.clamp(min=eps) - (enclose - union) / enclose.clamp(min=eps)


def _generalized_box_iou_nograd(a: Tensor, b: Tensor, eps: float) -> Tensor:
    """:func:`generalized_box_iou` with in-place updates of four [..., N, M] buffers: the same operations in the same
    order (bit-identical results) with a fraction of the allocations, which dominate on the CPU for large N x M."""
    a, b = _upcast(a), _upcast(b)
    dtype = torch.promote_types(a.dtype, b.dtype)
    a, b = a.to(dtype), b.to(dtype)
    ax0, ay0, ax1, ay1 = (t[..., :, None] for t in a.movedim(-1, 0).contiguous())
    bx0, by0, bx1, by1 = (t[..., None, :] for t in b.movedim(-1, 0).contiguous())
    area_a = (ax1 - ax0).clamp(min=0) * (ay1 - ay0).clamp(min=0)
    area_b = (bx1 - bx0).clamp(min=0) * (by1 - by0).clamp(min=0)
    inter = torch.minimum(ax1, bx1)
    tmp = torch.maximum(ax0, bx0)
    inter.sub_(tmp).clamp_(min=0)
    h = torch.minimum(ay1, by1)
    torch.maximum(ay0, by0, out=tmp)
    h.sub_(tmp).clamp_(min=0)
    inter.mul_(h)                                   # intersection
    union = torch.add(area_a, area_b, out=h).sub_(inter)
    enclose = torch.maximum(ax1, bx1)
    torch.minimum(ax0, bx0, out=tmp)
    enclose.sub_(tmp).clamp_(min=0)
    torch.maximum(ay1, by1, out=tmp)
    ey = tmp.sub_(torch.minimum(ay0, by0)).clamp_(min=0)
    enclose.mul_(ey)
    iou = inter.div_(torch.clamp(union, min=eps, out=ey))
    penalty = union.neg_().add_(enclose).div_(enclose.clamp_(min=eps))  # (enclose - union) / max(enclose, eps)
    return iou.sub_(penalty)


def generalized_box_iou_pairs(a: Tensor, b: Tensor, eps: float = EPS) -> Tensor:
    """Elementwise generalised IoU of matching xyxy boxes: a, b [..., 4] (broadcast) -> [...]."""
    a, b = _upcast(a), _upcast(b)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp(min=eps)
    lt = torch.minimum(a[..., :2], b[..., :2])
    rb = torch.maximum(a[..., 2:], b[..., 2:])
    wh = (rb - lt).clamp(min=0)
    enclose = wh[..., 0] * wh[..., 1]
    return iou - (enclose - union) / enclose.clamp(min=eps)
