"""Query-prior assignment distillation (DETRDistill §3.4).

The teacher's learned queries (projected to the student's width when needed) are decoded by the student as an extra,
isolated query group (``student.decode_group``).  Slot j of that group at student stage l is supervised with the
target the teacher's OWN Hungarian matching gave teacher query j at teacher stage ``stage_map[l]`` -- no new
matching.  The loss is the student's set criterion with those fixed assignments (official: focal 2, L1 5, GIoU 2,
normalised by the GT count averaged over processes).  An image without GT has all assignments -1, so the whole
group is supervised as background.

Consistent-query distillation (``distill.query_prior.teacher_predictions_weight`` > 0; KD-DETR's "consistent
distillation points", Wang et al. CVPR 2024, not in DETRDistill): the group's slot j at student stage l is ALSO
distilled toward the teacher's own prediction for query j at stage ``stage_map[l]``, slot for slot -- the two
models decoded the same query, so no matching is solved and no pair changes from step to step.  The losses are the
logits term's (soft class loss, L1, GIoU, with its class loss and box weighting) on that fixed identity pairing
(:func:`teacher_prediction_losses`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor, nn

from ..models.outputs import DetectorOutput, GroupOutput
from .logits import HungarianLogitsDistillLoss
from .stage_mapping import map_stages


@dataclass
class QueryPriorOutput:
    """loss: weighted total with grad; loss_dict: ``query_prior_cls`` / ``_bbox`` / ``_giou`` (weighted, detached,
    for logging; they sum to ``loss``); assignments: the [L_S, B, N_T] assignments used; losses: the same
    components as ``loss_dict`` with grad."""
    loss: Tensor
    loss_dict: dict[str, Tensor]
    assignments: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)


class QueryPriorLoss(nn.Module):
    """``QueryPriorLoss(criterion)(group, teacher_assignments, targets)`` -> :class:`QueryPriorOutput`.

    ``criterion`` is a :class:`~detrdistill.ops.criterion.SetCriterion`-like callable
    ``(logits, boxes, targets, assignments=, num_boxes=) -> CriterionOutput``; when None, the criterion passed to
    :meth:`forward` is used.  Terms are multiplied by ``weight`` (on top of the criterion's own 2 / 5 / 2).
    """

    def __init__(self, criterion: Callable | None = None, weight: float = 1.0, prefix: str = "query_prior_"):
        super().__init__()
        self.criterion = criterion
        self.weight = weight
        self.prefix = prefix

    def forward(self, group: GroupOutput, teacher_assignments: Tensor, targets: list[dict],
                stage_map: list[int] | None = None, criterion: Callable | None = None,
                num_boxes: float | None = None) -> "QueryPriorOutput":
        """group: the student's decode of the teacher-query group, [L_S, B, N_T, .];
        teacher_assignments: LongTensor [L_T, B, N_T] (teacher's GT matching per teacher stage, -1 = background)."""
        crit = criterion if criterion is not None else self.criterion
        if crit is None:
            raise ValueError("QueryPriorLoss needs a criterion (constructor or forward argument)")
        assignments = self.stage_assignments(group, teacher_assignments, stage_map)
        res = crit(group.logits, group.boxes, targets, assignments=assignments, num_boxes=num_boxes)
        return QueryPriorOutput(
            loss=self.weight * res.loss,
            loss_dict={f"{self.prefix}{k}": self.weight * v.detach() for k, v in res.loss_dict.items()},
            assignments=assignments,
            losses={f"{self.prefix}{k}": self.weight * v for k, v in res.losses.items()})

    @staticmethod
    def stage_assignments(group: GroupOutput, teacher_assignments: Tensor,
                          stage_map: list[int] | None = None) -> Tensor:
        """The teacher's assignments [L_T, B, N_T] taken to the group's L_S stages by ``stage_map`` -> [L_S, B, N_T]
        (on the group's device); checked against the group's shape."""
        L_S, B, N = group.logits.shape[:3]
        if teacher_assignments is None:
            raise ValueError("query-prior distillation needs the teacher's assignments (teacher forward with targets)")
        L_T, B_T, N_T = teacher_assignments.shape
        if (B_T, N_T) != (B, N):
            raise ValueError(f"teacher assignments are for {B_T} images x {N_T} queries, the group decodes "
                             f"{B} x {N}")
        if stage_map is None:
            stage_map = map_stages(L_S, L_T)
        idx = torch.as_tensor(stage_map, dtype=torch.long, device=teacher_assignments.device)
        return teacher_assignments.index_select(0, idx).to(group.logits.device)


def teacher_prediction_losses(loss: HungarianLogitsDistillLoss, group: GroupOutput, teacher: DetectorOutput,
                              stage_map: list[int], student_activation: str,
                              prefix: str = "query_kd_") -> dict[str, Tensor]:
    """Consistent-query distillation (see the module docstring): ``loss`` (a ``variant="all"`` logits loss) on the
    group [L_S, B, N_T, .] against the teacher's own predictions [L_T, B, N_T, .] with slot j paired to teacher query
    j at every stage -> ``{prefix}cls`` / ``bbox`` / ``giou`` (weighted, with grad)."""
    L_S, B, N = group.logits.shape[:3]
    if tuple(teacher.logits.shape[1:3]) != (B, N):
        raise ValueError(f"consistent-query distillation pairs the group's {N} slots with the teacher's queries one "
                         f"to one, but the teacher predicted {tuple(teacher.logits.shape[1:3])} (images, queries) "
                         f"for a group of {(B, N)}")
    identity = torch.arange(N, device=group.logits.device).expand(L_S, B, N)
    out = loss(group.logits, group.boxes, teacher.logits, teacher.boxes, stage_map,
               student_activation=student_activation, teacher_activation=teacher.class_activation,
               matching=identity)
    return {prefix + k.removeprefix("logits_"): v for k, v in out.losses.items()}
