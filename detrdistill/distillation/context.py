"""The step context: everything a distillation term may read in one training step.

Built once per step by the :class:`~detrdistill.distillation.distiller.Distiller` after the teacher and student
forwards; derived quantities that several terms need are computed lazily, at most once per step, and shared:

* :meth:`StepContext.teacher_assignments`: the teacher's own Hungarian matching to the GT, ``[L_T, B, N_T]``
  (query prior, ``logits.variant=pos_neg``);
* :meth:`StepContext.matching`: student query -> teacher query, ``[L_S, B, N_S]`` (contrastive); the logits term
  publishes its own matching with :meth:`StepContext.share`, so it is never recomputed.

They live in :attr:`StepContext.cache` under the keys below (filled ahead by
:func:`~detrdistill.distillation.step_matching.solve_step_matchings` when the terms declare they need them).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor

from .. import profiling
from ..models.outputs import DetectorOutput
from .logits import match_student_to_teacher

__all__ = ["StepContext", "TEACHER_ASSIGNMENTS", "MATCHING", "FULL_COST_MATCHING"]

# step cache keys
TEACHER_ASSIGNMENTS = "teacher_assignments"  # [L_T, B, N_T] the teacher's own GT assignment
MATCHING = "matching"                        # [L_S, B, N_S] student query -> teacher query
FULL_COST_MATCHING = "full_cost_matching"    # MATCHING when solved with the full costs (the logits term, "all")


@dataclass
class StepContext:
    """student / teacher: the two forwards (teacher outputs in float32, no grad); targets: B dicts
    (``class_labels`` [T], ``boxes`` [T, 4] normalised cxcywh); stage_map: the teacher stage of each student stage;
    criterion: the student's set criterion; teacher_matcher: ``(logits, boxes, targets) -> [L_T, B, N_T]``;
    teacher_affine: [B, 2] geometry of the teacher's own resized view (:mod:`.teacher_pixels`), None = same grid."""
    student: DetectorOutput
    teacher: DetectorOutput
    targets: list[dict]
    stage_map: list[int]
    criterion: Callable | None = None
    teacher_matcher: Callable | None = None
    teacher_affine: Tensor | None = None
    cache: dict[str, Any] = field(default_factory=dict, repr=False)

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``key`` is asked for in this step, the stored value afterwards."""
        if key not in self.cache:
            self.cache[key] = compute()
        return self.cache[key]

    def share(self, key: str, value: Any) -> None:
        """Publish a value a term computed anyway (e.g. its matching) for the terms after it."""
        self.cache.setdefault(key, value)

    def teacher_assignments(self) -> Tensor:
        """[L_T, B, N_T] GT index matched to each teacher query per stage (-1 = background); once per step."""
        def compute() -> Tensor:
            with torch.no_grad(), profiling.section("teacher_assignments"):
                out = self.teacher
                return self.teacher_matcher(out.logits, out.boxes, self.targets)
        return self.cached(TEACHER_ASSIGNMENTS, compute)

    def matching(self) -> Tensor:
        """[L_S, B, N_S] teacher query matched to each student query (-1 = none), following ``stage_map``."""
        s, t = self.student, self.teacher
        def compute() -> Tensor:
            with profiling.section("student_teacher_matching"):
                return match_student_to_teacher(s.logits, s.boxes, t.logits, t.boxes, self.stage_map,
                                                s.class_activation, t.class_activation)
        return self.cached(MATCHING, compute)
