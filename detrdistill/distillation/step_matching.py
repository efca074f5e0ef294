"""Every assignment problem of one distillation step, solved together.

A step needs up to three Hungarian matchings: the student against the GT (its set criterion), the student against
the teacher (logits / contrastive terms, per student stage) and the teacher against the GT (query prior,
``logits.variant=pos_neg``).  Solved one after another, each is one device -> host transfer and one round of the
solver thread pool over only its own problems.  :func:`solve_step_matchings` builds all their cost matrices first
and hands them to :func:`~detrdistill.ops.matcher.linear_assignment_many`: one dispatch, all threads busy.

The results are exactly those of the separate calls (same costs, same exact solver): the student-GT assignment is
passed to the criterion as ``assignments=``; the other two are stored in the :class:`~.context.StepContext` cache
under the keys the terms read (:data:`~.context.TEACHER_ASSIGNMENTS`, :data:`~.context.MATCHING`). What to solve
comes from what the terms declare (:func:`step_needs`).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import profiling
from ..ops.criterion import SetCriterion
from ..ops.matcher import HungarianMatcher, linear_assignment_many, pad_targets
from .context import MATCHING, TEACHER_ASSIGNMENTS, StepContext
from .logits import DEFAULT_MATCH_COSTS, MatchCosts, student_teacher_costs

__all__ = ["solve_step_matchings", "step_needs", "StepNeeds"]


class StepNeeds(NamedTuple):
    """What the step solves ahead: the teacher-GT assignment, the student-teacher matching, and its costs."""
    teacher_gt: bool
    student_teacher: bool
    costs: MatchCosts = DEFAULT_MATCH_COSTS


def step_needs(terms: list) -> StepNeeds:
    """The matchings ``terms`` (in step order) declare they read (see :class:`~.terms.DistillTerm`).

    The first term that reads or publishes a student-teacher matching decides it: one that reads it
    (``matching_costs``) gets it solved ahead with its costs; one that publishes its own (the logits term's
    ``variant=pos_neg`` two-part matching, shared with the later terms) leaves nothing to solve ahead."""
    teacher_gt = any(t.needs_teacher_assignments for t in terms)
    for t in terms:
        if t.matching_costs is not None:
            return StepNeeds(teacher_gt, True, MatchCosts(*t.matching_costs))
        if t.shares_matching:
            break
    return StepNeeds(teacher_gt, False)


def _gt_problem(matcher: HungarianMatcher, logits: Tensor, boxes: Tensor, padded: tuple) -> tuple | None:
    """(cost [L*B, N, T], None, col_valid [L*B, T]) of ``matcher`` for logits [L, B, N, C'], or None when T = 0."""
    labels, tgt_boxes, valid = padded
    L, B, N, _ = logits.shape
    if labels.shape[1] == 0 or N == 0:
        return None
    logits = logits.detach()
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    boxes = boxes.detach().to(logits.dtype)
    cost = matcher.cost_matrix(logits, boxes, labels, tgt_boxes.to(logits.dtype))
    return cost.reshape(L * B, N, -1), None, valid.repeat(L, 1)


def _student_gt_matcher(criterion) -> HungarianMatcher | None:
    """The criterion's own matcher when it is a plain :class:`SetCriterion` matching every stage, else None (then
    the criterion matches by itself as usual)."""
    if type(criterion) is SetCriterion and criterion.aux_loss and isinstance(criterion.matcher, HungarianMatcher):
        return criterion.matcher
    return None


def solve_step_matchings(ctx: StepContext, criterion, need_teacher_gt: bool, need_student_teacher: bool,
                         costs: MatchCosts = DEFAULT_MATCH_COSTS) -> Tensor | None:
    """Solve the step's matchings together; fill ``ctx.cache`` and return the student-GT assignment [L_S, B, N_S]
    for the criterion (None when the criterion matches by itself).  ``costs``: class / bbox / GIoU costs of the
    student-teacher matching."""
    s, t = ctx.student, ctx.teacher
    padded = pad_targets(ctx.targets, s.logits.device)
    problems, names = [], []
    s_matcher = _student_gt_matcher(criterion)
    if s_matcher is not None:
        problems.append(_gt_problem(s_matcher, s.logits, s.boxes, padded))
        names.append("student_gt")
    if need_teacher_gt and ctx.teacher_matcher is not None and TEACHER_ASSIGNMENTS not in ctx.cache:
        if isinstance(ctx.teacher_matcher, HungarianMatcher):
            problems.append(_gt_problem(ctx.teacher_matcher, t.logits, t.boxes, padded))
            names.append("teacher_gt")
    if need_student_teacher and MATCHING not in ctx.cache:
        problems.append((student_teacher_costs(s.logits, s.boxes, t.logits, t.boxes, ctx.stage_map,
                                               s.class_activation, t.class_activation, *costs), None, None))
        names.append("student_teacher")
    todo = [p for p in problems if p is not None]
    with profiling.section("step_matchings"):
        solved = iter(linear_assignment_many(todo))
    out = {}
    for name, problem in zip(names, problems):
        out[name] = next(solved) if problem is not None else None
    B = len(ctx.targets)
    if "teacher_gt" in out:
        L, N = t.logits.shape[0], t.logits.shape[2]
        a = out["teacher_gt"]
        ctx.cache[TEACHER_ASSIGNMENTS] = (a.view(L, B, N) if a is not None else
                                            torch.full((L, B, N), -1, dtype=torch.long, device=t.logits.device))
    if "student_teacher" in out:
        ctx.cache[MATCHING] = out["student_teacher"].view(s.logits.shape[0], B, s.logits.shape[2])
    if "student_gt" in out:
        L, N = s.logits.shape[0], s.logits.shape[2]
        a = out["student_gt"]
        return a.view(L, B, N) if a is not None else torch.full((L, B, N), -1, dtype=torch.long,
                                                                device=s.logits.device)
    return None
