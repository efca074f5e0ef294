"""The batched step matching (``distillation/step_matching.py``) with EQUAL student / teacher query counts and
depths -- where a student / teacher / GT mix-up keeps every shape -- against each matching solved alone and against
brute force over the loop-based costs of ``tests/method_reference.py``."""
from __future__ import annotations

import pytest
import torch

from detrdistill.distillation import HungarianLogitsDistillLoss, StepContext, match_student_to_teacher
from detrdistill.distillation.step_matching import solve_step_matchings, step_needs
from detrdistill.distillation.terms import LogitsTerm
from detrdistill.models.outputs import DetectorOutput
from detrdistill.ops.criterion import SetCriterion
from detrdistill.ops.matcher import HungarianMatcher

from . import method_reference as ref

L, B, N, C = 2, 3, 4, 3
ST_COSTS = (2.0, 3.0, 1.0)        # student-teacher costs that differ from the default 1 / 5 / 2
TEACHER_GT_COSTS = (3.0, 1.0, 4.0)  # the teacher's own GT matcher, unlike the student criterion's 2 / 5 / 2


def scene(act_t: str, seed: int):
    g = torch.Generator().manual_seed(seed)

    def boxes(*shape):
        return torch.cat([torch.rand(*shape, 2, generator=g) * 0.5 + 0.25,
                          torch.rand(*shape, 2, generator=g) * 0.3 + 0.1], -1)

    student = DetectorOutput(torch.randn(L, B, N, C, generator=g) * 2, boxes(L, B, N), torch.zeros(L, B, N, 4))
    teacher = DetectorOutput(torch.randn(L, B, N, C + (act_t == "softmax"), generator=g) * 2, boxes(L, B, N),
                             torch.zeros(L, B, N, 4), class_activation=act_t)
    # image 0: 3 GT, image 1: 1 GT (different counts, so images cannot be swapped unnoticed), image 2: none
    targets = [{"class_labels": torch.tensor([0, 2, 1]), "boxes": boxes(3)},
               {"class_labels": torch.tensor([1]), "boxes": boxes(1)},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    return student, teacher, targets


def total(cost: list[list[float]], assignment: list[int]) -> float:
    return sum(cost[i][j] for i, j in enumerate(assignment) if j >= 0)


def brute_force_check(assign: torch.Tensor, cost_of, rows: int, cols: int) -> None:
    """``assign`` [N] is one-to-one, matches min(rows, cols) pairs and reaches the brute-force optimum of the
    reference costs ``cost_of(i, j)``."""
    cost = [[cost_of(i, j) for j in range(cols)] for i in range(rows)]
    a = assign.tolist()
    used = [j for j in a if j >= 0]
    assert len(used) == min(rows, cols) == len(set(used)) and max(used, default=-1) < cols
    best, _, _ = ref.brute_force(cost) if cols else (0.0, None, None)
    assert total(cost, a) == pytest.approx(best, abs=1e-4)


@pytest.mark.parametrize("act_t,seed", [("sigmoid", 0), ("sigmoid", 1), ("softmax", 2)])
def test_step_matchings_with_equal_query_counts_equal_each_matching_alone(act_t, seed):
    student, teacher, targets = scene(act_t, seed)
    criterion = SetCriterion(C)
    teacher_matcher = HungarianMatcher(*TEACHER_GT_COSTS, class_loss="ce" if act_t == "softmax" else "focal")
    logits_term = LogitsTerm(HungarianLogitsDistillLoss(class_cost=ST_COSTS[0], bbox_cost=ST_COSTS[1],
                                                        giou_cost=ST_COSTS[2]))
    need_teacher_gt, need_st, costs = step_needs([logits_term])
    assert (need_teacher_gt, need_st, costs) == (False, True, ST_COSTS)
    ctx = StepContext(student, teacher, targets, [0, 1], criterion, teacher_matcher)
    student_gt = solve_step_matchings(ctx, criterion, True, True, costs)

    # each matching solved alone, with its own solver call
    alone_student_gt = criterion.matcher(student.logits, student.boxes, targets)
    alone_teacher_gt = teacher_matcher(teacher.logits, teacher.boxes, targets)
    alone_st = match_student_to_teacher(student.logits, student.boxes, teacher.logits, teacher.boxes, [0, 1],
                                        "sigmoid", act_t, *ST_COSTS)
    assert torch.equal(student_gt, alone_student_gt)
    assert torch.equal(ctx.cache["teacher_assignments"], alone_teacher_gt)
    assert torch.equal(ctx.cache["matching"], alone_st)
    # the three are really different problems here (else a mix-up could not show)
    assert not torch.equal(student_gt, ctx.cache["matching"])
    assert not torch.equal(ctx.cache["teacher_assignments"], student_gt)

    # brute force over the reference costs
    s_z, s_b, t_z, t_b = (x.tolist() for x in (student.logits, student.boxes, teacher.logits, teacher.boxes))
    for b, tgt in enumerate(targets):
        labels, gt = tgt["class_labels"].tolist(), tgt["boxes"].tolist()
        for l in range(L):
            brute_force_check(student_gt[l, b], lambda i, j: ref.gt_cost(s_z[l][b][i], s_b[l][b][i], labels[j], gt[j],
                                                                        "sigmoid", (2.0, 5.0, 2.0)), N, len(gt))
            brute_force_check(ctx.cache["teacher_assignments"][l, b],
                              lambda i, j: ref.gt_cost(t_z[l][b][i], t_b[l][b][i], labels[j], gt[j], act_t,
                                                       TEACHER_GT_COSTS), N, len(gt))
            brute_force_check(ctx.cache["matching"][l, b],
                              lambda i, j: ref.student_teacher_cost(s_z[l][b][i], s_b[l][b][i], t_z[l][b][j],
                                                                    t_b[l][b][j], "sigmoid", act_t, ST_COSTS), N, N)

    # the logits term then uses the step's matching: its losses equal the ones of its own solve
    shared = logits_term(ctx)
    own = logits_term.loss(student.logits, student.boxes, teacher.logits, teacher.boxes, [0, 1],
                           teacher_activation=act_t)
    for k, v in own.losses.items():
        torch.testing.assert_close(shared[k], v)


def test_step_matchings_follow_the_stage_map():
    """A shallower student (1 stage) on the teacher's last stage: the student-teacher problem uses teacher stage 1."""
    student, teacher, targets = scene("sigmoid", 3)
    student.logits, student.boxes = student.logits[1:], student.boxes[1:]
    ctx = StepContext(student, teacher, targets, [1], SetCriterion(C), HungarianMatcher())
    solve_step_matchings(ctx, ctx.criterion, False, True)
    assert "teacher_assignments" not in ctx.cache
    expected = match_student_to_teacher(student.logits, student.boxes, teacher.logits, teacher.boxes, [1])
    assert torch.equal(ctx.cache["matching"], expected)
    other = match_student_to_teacher(student.logits, student.boxes, teacher.logits, teacher.boxes, [0])
    assert not torch.equal(other, expected)


def test_step_needs_of_the_terms():
    """pos_neg solves its own two-part matching (nothing ahead) and needs the teacher's GT assignment."""
    pos_neg = LogitsTerm(HungarianLogitsDistillLoss(variant="pos_neg"))
    assert step_needs([pos_neg]) == (True, False, (1.0, 5.0, 2.0))
    assert step_needs([]) == (False, False, (1.0, 5.0, 2.0))
