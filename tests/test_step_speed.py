"""Speed-related properties of the distilled step: the section profiler, the inference-mode teacher forward and
one teacher-to-GT assignment per step (tiny Deformable DETR models)."""
from __future__ import annotations

import os

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detrdistill import profiling
from detrdistill.config import DistillConfig
from detrdistill.distillation import Distiller
from detrdistill.distillation.distiller import build_teacher_matcher
from detrdistill.ops.matcher import linear_assignment, linear_assignment_many, set_assignment_threads
from tests.test_distiller import batch, criterion, make, model_cfg, teacher  # noqa: F401  (fixtures)


def _tensors(out):
    ts = [out.logits, out.boxes, out.embeddings, *out.encoder_inputs, *out.encoder_outputs]
    if out.queries is not None:
        ts += [out.queries.content, out.queries.position, out.queries.reference]
    return [t for t in ts if t is not None]


def test_profiler_is_off_by_default_and_records_sections_when_on(teacher, batch, criterion):
    x, m, targets = batch
    dist = Distiller(teacher, make(model_cfg()), DistillConfig())
    assert profiling.active() is None
    assert profiling.section("a") is profiling.section("b")  # the shared null context: no timing work
    with profiling.enabled(sync_cuda=False) as prof:
        dist(x, m, targets, criterion).loss.backward()
    assert profiling.active() is None
    expected = {"teacher_forward", "student_forward", "student_loss", "term:logits", "term:feature", "feature_mask", "term:query_prior",
                "query_prior_decode", "step_matchings"}
    assert expected <= set(prof.seconds)
    assert all(v > 0 for v in prof.seconds.values())
    assert prof.seconds["term:feature"] >= prof.seconds["feature_mask"]  # outer sections include inner ones


def test_teacher_outputs_are_normal_tensors_equal_to_a_no_grad_forward(teacher, batch):
    x, m, _ = batch
    dist = Distiller(teacher, make(model_cfg()), DistillConfig())
    out = dist.teacher_forward(x, m)
    with torch.no_grad():
        ref = teacher(x, m)
    for t, r in zip(_tensors(out), _tensors(ref)):
        assert not t.is_inference() and not t.requires_grad
        torch.testing.assert_close(t, r, rtol=0, atol=0)
    # a teacher output may enter an autograd graph (as the query prior's table does through the projection)
    w = torch.ones((), requires_grad=True)
    (out.embeddings * w).sum().backward()
    assert w.grad is not None


def test_one_teacher_assignment_per_step_shared_by_every_term(teacher, batch, criterion):
    x, m, targets = batch
    cfg = DistillConfig(logits={"variant": "pos_neg"})  # query prior and pos_neg logits both need it
    base = build_teacher_matcher(cfg.teacher_matcher, teacher.class_activation)
    calls = []

    def counting(*args):
        calls.append(1)
        return base(*args)

    dist = Distiller(teacher, make(model_cfg()), cfg, teacher_matcher=counting)
    for step in range(2):
        out = dist(x, m, targets, criterion)
        assert len(calls) == step + 1
        assert out.teacher.assignments is not None


@pytest.mark.parametrize("overrides", [{}, {"logits": {"variant": "pos_neg"}, "contrastive": {"enabled": True}},
                                       {"logits": {"enabled": False}, "contrastive": {"enabled": True}}])
def test_step_matchings_solved_together_equal_one_by_one(teacher, batch, criterion, overrides):
    x, m, targets = batch
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(**overrides))
    results = []
    for together in (True, False):
        dist.batch_matchings = together
        torch.manual_seed(0)
        out = dist(x, m, targets, criterion)
        results.append(out)
    a, b = results
    assert a.loss_dict.keys() == b.loss_dict.keys()
    for k in a.loss_dict:
        torch.testing.assert_close(a.loss_dict[k], b.loss_dict[k], rtol=0, atol=0)
    assert torch.equal(a.student.assignments, b.student.assignments)
    assert (a.matching is None) == (b.matching is None)
    if a.matching is not None:
        assert torch.equal(a.matching, b.matching)
    assert torch.equal(a.teacher.assignments, b.teacher.assignments)


def test_linear_assignment_many_equals_separate_calls():
    g = torch.Generator().manual_seed(0)
    tied = torch.randint(0, 3, (5, 12, 12), generator=g).float()
    rect = torch.rand(7, 40, 9, generator=g)
    col_valid = torch.rand(7, 9, generator=g) > 0.3
    wide = torch.rand(3, 6, 30, generator=g)
    row_valid = torch.rand(3, 6, generator=g) > 0.5
    big = torch.rand(12, 100, 100, generator=g)  # enough entries for the thread pool
    empty = torch.rand(4, 10, 0)
    problems = [(tied, None, None), (rect, None, col_valid), (wide, row_valid, None), (big, None, None),
                (empty, None, None)]
    set_assignment_threads(2)
    try:
        together = linear_assignment_many(problems)
    finally:
        set_assignment_threads(min(8, os.cpu_count() or 1))
    for (cost, rv, cv), got in zip(problems, together):
        ref = linear_assignment(cost, rv, cv)
        assert got.shape == ref.shape
        # the same optimum value (ties may be broken differently only if the solver differed: it does not)
        assert torch.equal(got, ref)
    # and optimal against scipy on the big batch
    for k in range(big.shape[0]):
        r, c = linear_sum_assignment(big[k].double().numpy())
        assert abs(big[k][r, c].sum() - big[k][torch.arange(100), together[3][k]].sum()) < 1e-5


def test_teacher_in_bf16_under_bf16_mixed_precision_unless_set():
    from detrdistill.config import Config
    from detrdistill.distillation.task import teacher_distill_config

    assert teacher_distill_config(Config()).teacher_dtype == "float32"
    bf16 = Config(train={"mixed_precision": "bf16"})
    assert teacher_distill_config(bf16).teacher_dtype == "bfloat16"
    explicit = Config(train={"mixed_precision": "bf16"}, distill={"teacher_dtype": "float32"})
    assert teacher_distill_config(explicit).teacher_dtype == "float32"
