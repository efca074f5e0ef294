"""Batched DETR set criterion (Hungarian matching + focal/CE, L1 and GIoU losses) over every decoder stage at once.

Shapes: L decoder stages, B images, N queries, C classes (logits C for ``class_loss="focal"``, C + 1 for ``"ce"`` with
the last one "no-object"), T = the largest target count in the batch, P = matched (stage, image, query) triples.

Normalisation follows transformers / Deformable DETR exactly:

* focal:  ``sum over (B, N, C) of the sigmoid focal loss / num_boxes`` per stage (transformers writes this as
  ``sigmoid_focal_loss(...).mean(1).sum() / num_boxes * N``);
* ce:     cross entropy averaged over (B, N) with the per-class weights (no-object weight ``eos_coef``), per stage,
  not divided by num_boxes (DETR);
* L1 / GIoU: summed over matched pairs / num_boxes, per stage;

where ``num_boxes`` is the batch's GT count averaged over processes (:func:`reduce_num_boxes`), at least 1.
Stage losses are weighted and summed.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .boxes import cxcywh_to_xyxy, generalized_box_iou_pairs
from .. import profiling
from .matcher import HungarianMatcher, pad_targets


def process_count() -> int:
    """Processes in the default ``torch.distributed`` group (accelerate and torchrun initialise it); 1 without one."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def mean_across_processes(counts: Tensor) -> Tensor:
    """Element-wise mean of a count vector over processes, at least 1 (float64, on ``counts``' device).

    One SUM all-reduce when ``torch.distributed`` is initialised with world_size > 1 (this includes runs under
    accelerate, which initialises it; moved to the current CUDA device for NCCL), divided by world_size exactly
    once: transformers' ``ImageLoss`` uses accelerate's ``reduce`` (already a mean) and divides by world_size again,
    shrinking num_boxes (and inflating the loss) world_size times. Otherwise the counts themselves."""
    counts = counts.detach().to(torch.float64, copy=True)  # the all-reduce is in place: never on the caller's tensor
    world = process_count()
    if world > 1:
        dev = counts.device
        if dist.get_backend() == "nccl" and not counts.is_cuda:
            counts = counts.cuda()
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
        counts = (counts / world).to(dev)
    return counts.clamp(min=1.0)


def batch_num_boxes(targets: list[dict]) -> float:
    """:func:`reduce_num_boxes` of the GT boxes in ``targets`` (one dict per image, ``class_labels`` [T])."""
    return reduce_num_boxes(float(sum(len(t["class_labels"]) for t in targets)))


def reduce_num_boxes(n: float) -> float:
    """The set loss's normaliser: the batch's GT-box count ``n`` averaged over processes, at least 1
    (:func:`mean_across_processes` of one count, kept on the CPU: no device synchronisation on one process)."""
    return float(mean_across_processes(torch.tensor([float(n)], dtype=torch.float64))[0])


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Elementwise binary focal loss (RetinaNet).  logits, targets (0/1 floats) [...] -> [...] (no reduction)."""
    prob = logits.sigmoid()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = bce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def denoising_assignments(valid: Tensor, num_groups: int, num_stages: int, with_negatives: bool = False) -> Tensor:
    """Fixed assignments for DN-DETR / DINO denoising queries, to pass as ``SetCriterion(..., assignments=...)``.

    valid [B, T] bool (from :func:`pad_targets`) -> LongTensor [num_stages, B, G * T * (2 if with_negatives else 1)].
    Layout per group: T positive slots (slot t reconstructs target t; padding slots -1), then, with negatives, T
    negative slots (all -1, i.e. supervised as background).
    """
    B, T = valid.shape
    pos = torch.where(valid, torch.arange(T, device=valid.device)[None, :], -1)  # [B, T]
    group = torch.cat([pos, torch.full_like(pos, -1)], 1) if with_negatives else pos
    return group.repeat(1, num_groups)[None].expand(num_stages, -1, -1).contiguous()


@dataclass
class CriterionOutput:
    """loss: scalar (weighted, summed over supervised stages), with grad.
    loss_dict: {"cls", "bbox", "giou"} weighted and summed over stages, detached 0-d tensors (for logging).
    per_stage: same keys, each [L'] weighted, detached.
    losses: same keys, weighted and summed over stages, WITH grad (they sum to ``loss``).
    assignments: LongTensor [L', B, N] target index per query, -1 unmatched (L' = L, or 1 when aux_loss=False).
    num_boxes: the normaliser used.
    """
    loss: Tensor
    loss_dict: dict[str, Tensor]
    assignments: Tensor
    per_stage: dict[str, Tensor] = field(default_factory=dict)
    num_boxes: float = 1.0
    losses: dict[str, Tensor] = field(default_factory=dict)


class SetCriterion(nn.Module):
    """DETR / Deformable DETR set loss over stacked decoder stages, batched over stages and images (no Python loop
    other than the CPU assignment solver's).

    ``class_loss="focal"``: sigmoid logits [L, B, N, C], matching and loss as Deformable DETR (defaults).
    ``class_loss="ce"``: softmax logits [L, B, N, C + 1], matching ``-p[target]`` and weighted CE as DETR.
    """

    def __init__(self, num_classes: int, class_cost: float = 2.0, bbox_cost: float = 5.0, giou_cost: float = 2.0,
                 class_weight: float = 2.0, bbox_weight: float = 5.0, giou_weight: float = 2.0,
                 focal_alpha: float = 0.25, focal_gamma: float = 2.0, class_loss: str = "focal",
                 eos_coef: float = 0.1, aux_loss: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.class_loss = class_loss
        self.weights = {"cls": class_weight, "bbox": bbox_weight, "giou": giou_weight}
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.aux_loss = aux_loss
        self.matcher = HungarianMatcher(class_cost, bbox_cost, giou_cost, class_loss, focal_alpha, focal_gamma)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    @classmethod
    def from_config(cls, loss_cfg, num_classes: int, class_loss: str = "focal", eos_coef: float = 0.1) -> "SetCriterion":
        """Build from a :class:`detrdistill.config.LossConfig`."""
        return cls(num_classes, class_cost=loss_cfg.class_cost, bbox_cost=loss_cfg.bbox_cost,
                   giou_cost=loss_cfg.giou_cost, class_weight=loss_cfg.class_weight,
                   bbox_weight=loss_cfg.bbox_weight, giou_weight=loss_cfg.giou_weight,
                   focal_alpha=loss_cfg.focal_alpha, focal_gamma=loss_cfg.focal_gamma, class_loss=class_loss,
                   eos_coef=eos_coef, aux_loss=loss_cfg.aux_loss)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, class_loss={self.class_loss!r}, weights={self.weights}, " \
               f"aux_loss={self.aux_loss}"

    # ------------------------------------------------------------------------------------------------ losses
    def _class_loss(self, logits: Tensor, tcls: Tensor, matched: Tensor, num_boxes: float) -> Tensor:
        """logits [L, B, N, C'], tcls [L, B, N] target class (any value where unmatched), matched [L, B, N] -> [L]."""
        if self.class_loss == "focal":
            classes = torch.arange(logits.shape[-1], device=logits.device)
            onehot = ((tcls[..., None] == classes) & matched[..., None]).to(logits.dtype)
            return sigmoid_focal_loss(logits, onehot, self.focal_alpha, self.focal_gamma).sum((1, 2, 3)) / num_boxes
        target = torch.where(matched, tcls, self.num_classes)
        nll = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view(target.shape)
        w = self.empty_weight.to(logits.device, logits.dtype)[target]
        return (nll * w).sum((1, 2)) / w.sum((1, 2))

    @staticmethod
    def _box_losses(boxes: Tensor, tgt_boxes: Tensor, assignments: Tensor, num_boxes: float) -> tuple[Tensor, Tensor]:
        """boxes [L, B, N, 4], tgt_boxes [B, T, 4], assignments [L, B, N] -> (L1 [L], 1 - GIoU [L]) sums / num_boxes.

        Only matched pairs enter (compacted to P pairs), so a degenerate unmatched prediction cannot poison the loss
        or its gradient; with P = 0 the result is 0 and still attached to ``boxes``.
        """
        l_idx, b_idx, n_idx = (assignments >= 0).nonzero(as_tuple=True)
        pred = boxes[l_idx, b_idx, n_idx]                               # [P, 4]
        tgt = tgt_boxes[b_idx, assignments[l_idx, b_idx, n_idx]]        # [P, 4]
        l1 = (pred - tgt).abs().sum(-1)
        giou = 1 - generalized_box_iou_pairs(cxcywh_to_xyxy(pred), cxcywh_to_xyxy(tgt))
        zeros = boxes.new_zeros(boxes.shape[0])
        return zeros.index_add(0, l_idx, l1) / num_boxes, zeros.index_add(0, l_idx, giou.to(zeros.dtype)) / num_boxes

    def _check_assignments(self, assignments: Tensor, shape: tuple, counts: Tensor) -> Tensor:
        if tuple(assignments.shape) != shape:
            raise ValueError(f"assignments must be {shape} (stages, images, queries), got {tuple(assignments.shape)}")
        assignments = assignments.to(device=counts.device, dtype=torch.long)
        bad = (assignments < -1) | (assignments >= counts[None, :, None])
        if bool(bad.any()):
            raise ValueError("assignments hold target indices outside [-1, T_b) for their image")
        return assignments

    def forward(self, logits: Tensor, boxes: Tensor, targets: list[dict], assignments: Tensor | None = None,
                num_boxes: float | None = None) -> CriterionOutput:
        """Set loss of every decoder stage (or only the last when ``aux_loss=False``).

        logits:      [L, B, N, C] (focal) or [L, B, N, C + 1] (ce)
        boxes:       [L, B, N, 4] normalised cxcywh
        targets:     B dicts with ``class_labels`` [T_b] long and ``boxes`` [T_b, 4] cxcywh (T_b may be 0)
        assignments: optional LongTensor [L, B, N] (or [1, B, N] when aux_loss=False) of target indices / -1, used
                     verbatim instead of matching (e.g. a teacher's assignment; one target may serve several queries)
        num_boxes:   optional normaliser used as given; default :func:`reduce_num_boxes` of the batch's GT count
                     (one all-reduce per call under torch.distributed, so every rank must call forward)
        """
        if logits.dim() != 4 or boxes.shape[:3] != logits.shape[:3] or boxes.shape[-1] != 4:
            raise ValueError(f"expected logits [L,B,N,C] and boxes [L,B,N,4], got {tuple(logits.shape)}, "
                             f"{tuple(boxes.shape)}")
        expected_c = self.num_classes + (self.class_loss == "ce")
        if logits.shape[-1] != expected_c:
            raise ValueError(f"logits have {logits.shape[-1]} classes, expected {expected_c} ({self.class_loss})")
        if len(targets) != logits.shape[1]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[1]}")
        if not self.aux_loss:
            logits, boxes = logits[-1:], boxes[-1:]
            if assignments is not None and assignments.shape[0] != 1:
                assignments = assignments[-1:]
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits, boxes = logits.float(), boxes.float()
        L, B, N, _ = logits.shape
        labels, tgt_boxes, valid = pad_targets(targets, logits.device)
        tgt_boxes = tgt_boxes.to(boxes.dtype)
        counts = valid.sum(1)
        if assignments is None:
            with profiling.section("student_gt_matching"):
                assignments = self.matcher.match_padded(logits.detach(), boxes.detach(), labels, tgt_boxes, valid)
        else:
            assignments = self._check_assignments(assignments, (L, B, N), counts)
        if num_boxes is None:
            num_boxes = batch_num_boxes(targets)

        matched = assignments >= 0
        if labels.shape[1] > 0:
            tcls = labels[None].expand(L, B, -1).gather(2, assignments.clamp(min=0))
        else:
            tcls = torch.zeros_like(assignments)
        per_stage = {"cls": self._class_loss(logits, tcls, matched, num_boxes)}
        per_stage["bbox"], per_stage["giou"] = self._box_losses(boxes, tgt_boxes, assignments, num_boxes)
        per_stage = {k: self.weights[k] * v for k, v in per_stage.items()}
        loss = sum(v.sum() for v in per_stage.values())
        return CriterionOutput(
            loss=loss,
            loss_dict={k: v.detach().sum() for k, v in per_stage.items()},
            assignments=assignments,
            per_stage={k: v.detach() for k, v in per_stage.items()},
            num_boxes=float(num_boxes),
            losses={k: v.sum() for k, v in per_stage.items()},
        )
