"""Hungarian-matching logits distillation (DETRDistill §3.2).

Shapes: L_S / L_T student / teacher decoder stages, B images, N_S / N_T queries, C classes (C + 1 logits for a
softmax family, the last one "no-object"), K = L_S * B independent matching problems.

For each student stage l and its teacher stage t = stage_map[l] (see :mod:`.stage_mapping`), the student's
predictions are matched one-to-one to the teacher's stage-t predictions (pseudo ground truth) with

    c_ij = class_cost * Σ_c [ -p_jc log q_ic - (1 - p_jc) log(1 - q_ic) ]     (soft BCE summed over classes)
         + bbox_cost  * ||b^S_i - b^T_j||_1                                   (normalised cxcywh)
         - giou_cost  * GIoU(b^S_i, b^T_j)

where p = teacher class probabilities, q = student class probabilities and the teacher boxes are clipped to the
image first (exactly the official ``DistillHungarianAssigner``).  All K problems of a step are solved in ONE
batched :func:`~detrdistill.ops.matcher.linear_assignment` call.  The loss on the matched pairs is the same soft BCE
(normalised by the local matched count, weight 1), plus L1 (5) and 1 - GIoU (2) normalised by the matched count
averaged over processes (at least 1).  Losses are summed over student stages.

Decisions (documented deviations / choices):

* **GIoU in normalised coordinates.**  The code computes GIoU on pixel xyxy boxes.  IoU and GIoU are ratios of
  areas, and all areas scale by ``w * h`` under the per-axis map normalised -> pixels, so the values are identical;
  no image size is needed.  Clipping to [0, 1] in normalised coordinates equals clipping to the (un-padded) image.
* **Softmax families.**  Teacher and student probabilities come from
  :func:`~detrdistill.models.outputs.class_probs`.  When BOTH models are softmax (C + 1 logits) the class term is
  the soft cross-entropy over the full C + 1 distribution, ``-Σ_k p_k log q_k`` (no-object included; its minimum is
  the teacher's entropy).  Otherwise it is the per-class soft BCE on the C foreground probabilities (exactly
  ``binary_cross_entropy_with_logits`` for a sigmoid student; for a softmax student ``log q`` comes from
  ``log_softmax`` and ``log(1 - q)`` from a stable ``log1mexp``, with ``q <= 1 - 1e-6``).
* **Unequal query counts.**  N_S > N_T: N_S - N_T student queries stay unmatched and get NO distillation target
  (the official code would give them the bogus class index C).  N_S < N_T: the teacher predictions the matcher did
  not pick are simply unused.  Normalisers count matched pairs only.
* **variant="pos_neg" (the paper's Eq. 3 / Eq. 4; our reading of Eq. 4).**  Teacher *positives* of stage t are the
  teacher queries its own Hungarian assignment matched to a GT box (``teacher_assignments >= 0``); in an image
  without GT (or when no assignments are given) they are the queries whose highest class probability is
  ``>= pos_threshold``.  Everything else is a *negative*.
  1. Positive matching: student queries vs teacher positives with the full cost above (one batched call).
     Matched pairs get the soft class BCE + L1 + GIoU, each normalised by the number of positive pairs (averaged
     over processes, at least 1) -- i.e. a set-prediction loss with the teacher positives as pseudo-GT (Eq. 3).
  2. Negative matching: the student queries left over vs the teacher negatives, class cost only (one more batched
     call).  Matched pairs get ``neg_weight * class_weight *`` the soft class BCE toward the teacher's (low) soft
     scores, NO box term (a negative's box is not an object), normalised by the local number of negative pairs
     (Eq. 4, reported as ``logits_neg``).
  Student queries matched to neither (N_S > N_T) get nothing.

Weightings (not in the paper or the official code; the defaults are the official form):

* **class_loss="quality_focal"** multiplies the soft BCE of each class by ``|p - q| ** focal_gamma`` (the quality
  focal loss of GFL, the soft-target form of the focal loss that DETR-family students are trained with): pairs the
  student already agrees with, most of them background, stop dominating the term (the factor is a weight without
  gradient, as RT-DETR's and D-FINE's varifocal losses treat theirs).  Normalised by the matched
  teacher predictions' summed score (see below) instead of the matched count.  Sigmoid ("bce" mode) only.
* **box_weighting="teacher_score"** weights each matched pair's L1 and GIoU by the teacher's score of its box,
  ``s_j = max_c p_jc`` (IoU-aware for the RT-DETR / D-FINE / DEIM families), and normalises by ``Σ s_j`` over the
  matched pairs of the stage (averaged over processes, at least 1): a confident teacher box is a pseudo ground
  truth at the weight of a real one, a background query's box (which no metric scores) hardly counts.

Both change the loss on the matched pairs only: the student -> teacher matching keeps the official costs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import profiling
from ..models.outputs import class_probs
from ..ops.boxes import cxcywh_to_xyxy, generalized_box_iou, generalized_box_iou_pairs, xyxy_to_cxcywh
from ..ops.criterion import mean_across_processes
from ..ops.matcher import linear_assignment
from .stage_mapping import map_stages

_LOG_Q_MAX = -1e-6  # log(1 - 1e-6): keeps log(1 - q) finite for a saturated softmax probability


class MatchCosts(NamedTuple):
    """Costs of a student -> teacher matching (see the module docstring); the defaults are the official ones:
    class 1 (summed over classes), L1 5, GIoU 2."""
    class_cost: float = 1.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0


DEFAULT_MATCH_COSTS = MatchCosts()
_D = DEFAULT_MATCH_COSTS


# ----------------------------------------------------------------------------------------------- helpers
def no_autocast(like: Tensor):
    """Context that turns autocast off on ``like``'s device (losses and costs are computed in float32)."""
    return torch.autocast(device_type=like.device.type, enabled=False)


def _log1mexp(log_q: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= _LOG_Q_MAX, numerically stable on both branches."""
    x = log_q.clamp(max=_LOG_Q_MAX)
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


@dataclass
class SoftClassTerms:
    """What the soft class cost / loss needs.

    mode "ce":  ``log_q`` [.., C+1] student log-softmax, ``target`` [.., C+1] teacher softmax.
    mode "bce": ``log_q`` / ``log_1mq`` [.., C] student log-probabilities of each class being on / off,
                ``target`` [.., C] teacher foreground probabilities.
    """
    mode: str
    log_q: Tensor
    target: Tensor
    log_1mq: Tensor | None = None


def soft_class_terms(student_logits: Tensor, student_activation: str, teacher_logits: Tensor,
                     teacher_activation: str) -> SoftClassTerms:
    """Student log-probabilities (with grad) and teacher soft targets (no grad) for the soft class term."""
    for act in (student_activation, teacher_activation):
        if act not in ("sigmoid", "softmax"):
            raise ValueError(f"class activation must be 'sigmoid' or 'softmax', got {act!r}")
    z_s = student_logits.float()
    z_t = teacher_logits.detach().float()
    if student_activation == "softmax" and teacher_activation == "softmax":
        if z_s.shape[-1] != z_t.shape[-1]:
            raise ValueError(f"student has {z_s.shape[-1] - 1} classes, teacher {z_t.shape[-1] - 1}")
        return SoftClassTerms("ce", z_s.log_softmax(-1), z_t.softmax(-1))
    target = class_probs(z_t, teacher_activation)
    if student_activation == "sigmoid":
        log_q, log_1mq = F.logsigmoid(z_s), F.logsigmoid(-z_s)
    else:
        log_q = z_s.log_softmax(-1)[..., :-1]
        log_1mq = _log1mexp(log_q)
    if log_q.shape[-1] != target.shape[-1]:
        raise ValueError(f"student has {log_q.shape[-1]} classes, teacher {target.shape[-1]}")
    return SoftClassTerms("bce", log_q, target, log_1mq)


def pairwise_class_cost(terms: SoftClassTerms) -> Tensor:
    """Soft class cost of every (student i, teacher j) pair: [K, N_S, .] x [K, N_T, .] -> [K, N_S, N_T]."""
    if terms.mode == "ce":
        return -torch.einsum("knc,kmc->knm", terms.log_q, terms.target)
    # Σ_c p log q + (1 - p) log(1 - q) = Σ_c p (log q - log(1 - q)) + Σ_c log(1 - q): one matrix product
    return -(torch.einsum("knc,kmc->knm", terms.log_q - terms.log_1mq, terms.target)
             + terms.log_1mq.sum(-1)[:, :, None])


def paired_class_loss(log_q: Tensor, target: Tensor, log_1mq: Tensor | None,
                      class_weight: Tensor | None = None) -> Tensor:
    """Soft class loss of aligned pairs, summed over classes: [..., C'] -> [...]; ``class_weight`` [..., C']
    (optional, "bce" only) weights each class's BCE before the sum."""
    if log_1mq is None:  # "ce"
        return -(target * log_q).sum(-1)
    bce = target * log_q + (1 - target) * log_1mq
    return -(bce if class_weight is None else class_weight * bce).sum(-1)


def clip_boxes(boxes: Tensor) -> Tensor:
    """Clip normalised cxcywh boxes to the image ([0, 1] in xyxy) and return them as cxcywh."""
    return xyxy_to_cxcywh(cxcywh_to_xyxy(boxes).clamp(0.0, 1.0))


def _gather_rows(t: Tensor, index: Tensor) -> Tensor:
    """t [K, M, ...], index [K, N] (>= 0) -> [K, N, ...]."""
    idx = index.view(*index.shape, *([1] * (t.dim() - 2))).expand(*index.shape, *t.shape[2:])
    return t.gather(1, idx)


def _flat_stages(x: Tensor, stage_map: list[int]) -> Tensor:
    """teacher tensor [L_T, B, ...] -> [L_S * B, ...] following ``stage_map``."""
    idx = torch.as_tensor(stage_map, device=x.device, dtype=torch.long)
    return x.index_select(0, idx).flatten(0, 1)


@torch.no_grad()
def match_cost(terms: SoftClassTerms, student_boxes: Tensor, teacher_boxes: Tensor, class_cost: float,
               bbox_cost: float, giou_cost: float) -> Tensor:
    """Matching cost [K, N_S, N_T] (teacher boxes already clipped); see the module docstring."""
    c_terms = SoftClassTerms(terms.mode, terms.log_q.detach().float(), terms.target.float(),
                             None if terms.log_1mq is None else terms.log_1mq.detach().float())
    with no_autocast(terms.log_q):  # a bf16 einsum over 80 classes would blur the matching
        cost = class_cost * pairwise_class_cost(c_terms)
        sb, tb = student_boxes.detach().float(), teacher_boxes.float()
        if bbox_cost:
            cost = cost + bbox_cost * torch.cdist(sb, tb, p=1)
        if giou_cost:
            cost = cost - giou_cost * generalized_box_iou(cxcywh_to_xyxy(sb), cxcywh_to_xyxy(tb))
    return cost


@torch.no_grad()
def match_student_to_teacher(student_logits: Tensor, student_boxes: Tensor, teacher_logits: Tensor,
                             teacher_boxes: Tensor, stage_map: list[int] | None = None,
                             student_activation: str = "sigmoid", teacher_activation: str = "sigmoid",
                             class_cost: float = _D.class_cost, bbox_cost: float = _D.bbox_cost,
                             giou_cost: float = _D.giou_cost) -> Tensor:
    """Hungarian matching of each student stage to its teacher stage (one batched solve).

    student_* [L_S, B, N_S, .], teacher_* [L_T, B, N_T, .] -> LongTensor [L_S, B, N_S]: the teacher query matched to
    each student query (-1 = unmatched).  ``stage_map`` defaults to :func:`map_stages` ("uniform").
    """
    L_S, B, N_S = student_logits.shape[:3]
    cost = student_teacher_costs(student_logits, student_boxes, teacher_logits, teacher_boxes, stage_map,
                                 student_activation, teacher_activation, class_cost, bbox_cost, giou_cost)
    return linear_assignment(cost).view(L_S, B, N_S)


@torch.no_grad()
def student_teacher_costs(student_logits: Tensor, student_boxes: Tensor, teacher_logits: Tensor,
                          teacher_boxes: Tensor, stage_map: list[int] | None = None,
                          student_activation: str = "sigmoid", teacher_activation: str = "sigmoid",
                          class_cost: float = _D.class_cost, bbox_cost: float = _D.bbox_cost,
                          giou_cost: float = _D.giou_cost) -> Tensor:
    """The costs :func:`match_student_to_teacher` solves: [L_S * B, N_S, N_T] (student stage-major)."""
    L_S = student_logits.shape[0]
    if stage_map is None:
        stage_map = map_stages(L_S, teacher_logits.shape[0])
    terms = soft_class_terms(student_logits.detach().flatten(0, 1), student_activation,
                             _flat_stages(teacher_logits, stage_map), teacher_activation)
    tb = clip_boxes(_flat_stages(teacher_boxes, stage_map).float())
    return match_cost(terms, student_boxes.flatten(0, 1), tb, class_cost, bbox_cost, giou_cost)


# ----------------------------------------------------------------------------------------------- loss
@dataclass
class LogitsDistillOutput:
    """losses:         named weighted terms (summed over student stages), each a 0-d tensor with grad:
                       ``logits_cls``, ``logits_bbox``, ``logits_giou`` (+ ``logits_neg`` for ``pos_neg``)
    matching:       LongTensor [L_S, B, N_S], teacher query index matched to each student query, -1 = none
                    (for ``pos_neg`` positives and negatives together)
    positive:       bool [L_S, B, N_S]: the student query was matched to a teacher positive (all matched for "all")
    teacher_stages: the teacher stage used for each student stage
    """
    losses: dict[str, Tensor]
    matching: Tensor
    positive: Tensor
    teacher_stages: list[int] = field(default_factory=list)


class HungarianLogitsDistillLoss(nn.Module):
    """Hungarian-matching logits distillation; see the module docstring for the exact formulas and choices.

    Loss weights default to the official values (BCE 1, L1 5, GIoU 2); so do the matching costs
    (:data:`DEFAULT_MATCH_COSTS`).
    """

    def __init__(self, class_weight: float = 1.0, bbox_weight: float = 5.0, giou_weight: float = 2.0,
                 variant: str = "all", neg_weight: float = 1.0, pos_threshold: float = 0.5,
                 class_cost: float = _D.class_cost, bbox_cost: float = _D.bbox_cost, giou_cost: float = _D.giou_cost,
                 class_loss: str = "bce", focal_gamma: float = 2.0, box_weighting: str = "uniform"):
        super().__init__()
        if variant not in ("all", "pos_neg"):
            raise ValueError(f"variant must be 'all' or 'pos_neg', got {variant!r}")
        if class_loss not in ("bce", "quality_focal"):
            raise ValueError(f"class_loss must be 'bce' or 'quality_focal', got {class_loss!r}")
        if box_weighting not in ("uniform", "teacher_score"):
            raise ValueError(f"box_weighting must be 'uniform' or 'teacher_score', got {box_weighting!r}")
        self.class_loss, self.focal_gamma, self.box_weighting = class_loss, focal_gamma, box_weighting
        self.class_weight, self.bbox_weight, self.giou_weight = class_weight, bbox_weight, giou_weight
        self.variant, self.neg_weight, self.pos_threshold = variant, neg_weight, pos_threshold
        self.class_cost, self.bbox_cost, self.giou_cost = class_cost, bbox_cost, giou_cost

    @property
    def costs(self) -> MatchCosts:
        """The class / bbox / GIoU costs of its student -> teacher matching."""
        return MatchCosts(self.class_cost, self.bbox_cost, self.giou_cost)

    def extra_repr(self) -> str:
        return (f"variant={self.variant!r}, weights=(cls {self.class_weight}, bbox {self.bbox_weight}, "
                f"giou {self.giou_weight}, neg {self.neg_weight}), class_loss={self.class_loss!r}, "
                f"box_weighting={self.box_weighting!r}")

    @torch.no_grad()
    def teacher_positives(self, teacher_logits: Tensor, teacher_activation: str,
                          teacher_assignments: Tensor | None, targets: list[dict] | None) -> Tensor:
        """bool [L_T, B, N_T]: the teacher's positive predictions (see the module docstring)."""
        L_T, B, N_T = teacher_logits.shape[:3]
        by_score = class_probs(teacher_logits.detach().float(), teacher_activation).amax(-1) >= self.pos_threshold
        if teacher_assignments is None:
            return by_score
        if tuple(teacher_assignments.shape) != (L_T, B, N_T):
            raise ValueError(f"teacher_assignments must be {(L_T, B, N_T)}, got {tuple(teacher_assignments.shape)}")
        if targets is None:
            has_gt = (teacher_assignments >= 0).any(0).any(-1)  # [B]
        else:
            has_gt = torch.tensor([len(t["class_labels"]) > 0 for t in targets], device=teacher_logits.device)
        return torch.where(has_gt[None, :, None], teacher_assignments.to(teacher_logits.device) >= 0, by_score)

    def forward(self, student_logits: Tensor, student_boxes: Tensor, teacher_logits: Tensor, teacher_boxes: Tensor,
                stage_map: list[int] | None = None, *, student_activation: str = "sigmoid",
                teacher_activation: str = "sigmoid", teacher_assignments: Tensor | None = None,
                targets: list[dict] | None = None, matching: Tensor | None = None) -> LogitsDistillOutput:
        """student_* [L_S, B, N_S, .] (with grad), teacher_* [L_T, B, N_T, .] (no grad needed).

        ``teacher_assignments`` [L_T, B, N_T] (the teacher's own GT matching) and ``targets`` are only used by
        ``variant="pos_neg"``.  ``stage_map`` defaults to ``map_stages(L_S, L_T, "uniform")``.  ``matching``
        [L_S, B, N_S]: for ``variant="all"``, the student-teacher matching already solved with this loss's costs
        (e.g. together with the step's other assignment problems); None = solve it here.
        """
        stage_map = _checked_stage_map(student_logits, teacher_logits, stage_map)
        L_S, B, N_S = student_logits.shape[:3]
        terms = soft_class_terms(student_logits.flatten(0, 1), student_activation,
                                 _flat_stages(teacher_logits, stage_map), teacher_activation)
        s_boxes = student_boxes.flatten(0, 1).float()                                 # [K, N_S, 4]
        t_boxes = clip_boxes(_flat_stages(teacher_boxes, stage_map).detach().float())  # [K, N_T, 4]
        with profiling.section("student_teacher_matching"):
            if self.variant == "all":
                if matching is not None:
                    match = matching.reshape(L_S * B, N_S).to(s_boxes.device)
                else:
                    cost = match_cost(terms, s_boxes, t_boxes, self.class_cost, self.bbox_cost, self.giou_cost)
                    match = linear_assignment(cost)                                    # [K, N_S]
                positive = match >= 0
                negative = torch.zeros_like(positive)
            else:
                pos_t = _flat_stages(self.teacher_positives(teacher_logits, teacher_activation,
                                                            teacher_assignments, targets), stage_map)  # [K, N_T]
                match, positive, negative = self._match_pos_neg(terms, s_boxes, t_boxes, pos_t)
        losses = self._pair_losses(terms, s_boxes, t_boxes, match, positive, negative, (L_S, B, N_S))
        return LogitsDistillOutput(losses, match.view(L_S, B, N_S), positive.view(L_S, B, N_S), list(stage_map))

    def _match_pos_neg(self, terms: SoftClassTerms, s_boxes: Tensor, t_boxes: Tensor,
                       pos_t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Student queries vs teacher positives (full cost), then the rest vs teacher negatives (class cost only).
        Returns match [K, N_S] and the positive / negative student masks [K, N_S]."""
        cost = match_cost(terms, s_boxes, t_boxes, self.class_cost, self.bbox_cost, self.giou_cost)
        m_pos = linear_assignment(cost, None, pos_t)
        free = m_pos < 0
        cost_neg = match_cost(terms, s_boxes, t_boxes, 1.0, 0.0, 0.0)
        m_neg = linear_assignment(cost_neg, free, ~pos_t)
        return torch.where(free, m_neg, m_pos), m_pos >= 0, free & (m_neg >= 0)

    def _pair_losses(self, terms: SoftClassTerms, s_boxes: Tensor, t_boxes: Tensor, match: Tensor, positive: Tensor,
                     negative: Tensor, shape: tuple[int, int, int]) -> dict[str, Tensor]:
        """The weighted losses of the matched pairs, normalised per stage and summed over stages;
        ``shape`` = (L_S, B, N_S)."""
        idx = match.clamp(min=0)
        tgt = _gather_rows(terms.target, idx)
        focal = None
        if self.class_loss == "quality_focal":
            if terms.log_1mq is None:
                raise ValueError("class_loss='quality_focal' needs a sigmoid student or teacher (both are softmax)")
            focal = (tgt - terms.log_q.exp()).abs().detach().pow(self.focal_gamma)
        cls = paired_class_loss(terms.log_q, tgt, terms.log_1mq, focal)                 # [K, N_S]
        pos_f = positive.to(cls.dtype)
        t_matched = _gather_rows(t_boxes, idx)                                          # [K, N_S, 4]
        l1 = (s_boxes - t_matched).abs().sum(-1)
        giou = 1 - generalized_box_iou_pairs(cxcywh_to_xyxy(s_boxes), cxcywh_to_xyxy(t_matched))
        # never let an unmatched (possibly degenerate) pair reach the loss or its gradient
        cls, l1, giou = (torch.where(positive | negative, v, torch.zeros_like(v)) for v in (cls, l1, giou))

        per_stage = lambda v: v.view(*shape).sum((1, 2))  # noqa: E731  [L_S]
        n_pos = per_stage(pos_f)
        n_pos_global = mean_across_processes(n_pos).to(cls.dtype)
        cls_norm = n_pos.clamp(min=1) if self.variant == "all" else n_pos_global  # "all": local count (official)
        box_w, box_norm = pos_f, n_pos_global
        if self.class_loss == "quality_focal" or self.box_weighting == "teacher_score":
            fg = tgt[..., :-1] if terms.mode == "ce" else tgt                           # foreground classes
            score = fg.detach().amax(-1) * pos_f                                         # [K, N_S] s_j, matched
            n_soft = mean_across_processes(per_stage(score)).to(cls.dtype).clamp(min=1)
            if self.class_loss == "quality_focal":
                cls_norm = n_soft
            if self.box_weighting == "teacher_score":
                box_w, box_norm = score, n_soft
        losses = {
            "logits_cls": self.class_weight * (per_stage(cls * pos_f) / cls_norm).sum(),
            "logits_bbox": self.bbox_weight * (per_stage(l1 * box_w) / box_norm).sum(),
            "logits_giou": self.giou_weight * (per_stage(giou * box_w) / box_norm).sum(),
        }
        if self.variant == "pos_neg":
            neg_f = negative.to(cls.dtype)
            losses["logits_neg"] = self.neg_weight * self.class_weight * (
                per_stage(cls * neg_f) / per_stage(neg_f).clamp(min=1)).sum()
        return losses


def _checked_stage_map(student_logits: Tensor, teacher_logits: Tensor, stage_map: list[int] | None) -> list[int]:
    """``stage_map`` (default: uniform) after checking both logits are [L, B, N, C] for the same batch."""
    if student_logits.dim() != 4 or teacher_logits.dim() != 4:
        raise ValueError("logits must be [L, B, N, C]")
    L_S, B = student_logits.shape[:2]
    L_T, B_T = teacher_logits.shape[:2]
    if B_T != B:
        raise ValueError(f"student batch {B} != teacher batch {B_T}")
    if stage_map is None:
        stage_map = map_stages(L_S, L_T)
    if len(stage_map) != L_S or max(stage_map) >= L_T or min(stage_map) < 0:
        raise ValueError(f"stage_map {stage_map} does not fit {L_S} student / {L_T} teacher stages")
    return stage_map
