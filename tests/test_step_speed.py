"""Speed-related properties of the distilled step: the section profiler, the inference-mode teacher forward and
one teacher-to-GT assignment per step (tiny Deformable DETR models)."""
from __future__ import annotations

import torch

from detrdistill import profiling
from detrdistill.config import DistillConfig
from detrdistill.distillation import Distiller
from detrdistill.distillation.distiller import build_teacher_matcher
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
    expected = {"teacher_forward", "student_forward", "student_loss", "student_gt_matching", "term:logits",
                "student_teacher_matching", "term:feature", "feature_mask", "term:query_prior",
                "query_prior_decode", "teacher_assignments"}
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
