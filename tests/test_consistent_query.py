"""Consistent-query distillation (``distill.query_prior.teacher_predictions_weight``): the query-prior group's slot j
distilled toward the teacher's own prediction for query j, slot for slot (no matching), against a direct
computation, its properties, and its wiring from the config into the distiller."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig
from detrdistill.distillation import Distiller, HungarianLogitsDistillLoss
from detrdistill.distillation.query_prior import teacher_prediction_losses
from detrdistill.models.outputs import DetectorOutput, GroupOutput

from .test_distiller import batch, criterion, make, model_cfg, teacher  # noqa: F401
from .test_logits_weighting import _case, _reference

KD_KEYS = {"query_kd_cls", "query_kd_bbox", "query_kd_giou"}
QUALITY = {"class_loss": "quality_focal", "box_weighting": "teacher_score"}


def _outputs(zs, bs, zt, bt):
    group = GroupOutput(logits=zs, boxes=bs, embeddings=torch.zeros(*zs.shape[:3], 4))
    teacher_out = DetectorOutput(logits=zt, boxes=bt, embeddings=torch.zeros(*zt.shape[:3], 4))
    return group, teacher_out


def _losses(zs, bs, zt, bt, **kw):
    group, t = _outputs(zs, bs, zt, bt)
    loss = HungarianLogitsDistillLoss(**{**QUALITY, **kw})
    return teacher_prediction_losses(loss, group, t, list(range(zs.shape[0])), "sigmoid")


def test_slot_j_is_paired_with_teacher_query_j_at_every_stage():
    zs, bs, zt, bt = _case(3)
    out = _losses(zs, bs, zt, bt)
    identity = torch.arange(zs.shape[2]).expand(*zs.shape[:3])
    cls, l1, giou = _reference(zs, bs, zt, bt, identity)
    assert set(out) == KD_KEYS
    assert out["query_kd_cls"].item() == pytest.approx(cls, rel=1e-4)
    assert out["query_kd_bbox"].item() == pytest.approx(l1, rel=1e-4)
    assert out["query_kd_giou"].item() == pytest.approx(giou, rel=1e-4)


def test_no_matching_permuting_the_teacher_queries_changes_the_loss_unlike_the_hungarian_term():
    zs, bs, zt, bt = _case(4)
    perm = torch.randperm(zs.shape[2], generator=torch.Generator().manual_seed(0))
    a = _losses(zs, bs, zt, bt)
    b = _losses(zs, bs, zt[:, :, perm], bt[:, :, perm])
    assert abs(a["query_kd_bbox"].item() - b["query_kd_bbox"].item()) > 1e-3
    hungarian = HungarianLogitsDistillLoss(**QUALITY)
    h_a, h_b = hungarian(zs, bs, zt, bt).losses, hungarian(zs, bs, zt[:, :, perm], bt[:, :, perm]).losses
    assert h_a["logits_bbox"].item() == pytest.approx(h_b["logits_bbox"].item(), rel=1e-5)


def test_zero_when_the_group_predicts_what_the_teacher_does_and_positive_otherwise():
    _, _, zt, bt = _case(5)
    same = _losses(zt.clone(), bt.clone(), zt, bt)
    assert all(v.abs() < 1e-6 for v in same.values())
    off = _losses(zt + 0.5, (bt + 0.05).clamp(0.05, 0.95), zt, bt)
    assert all(v > 0 for v in off.values())


def test_gradients_reach_the_group_never_the_teacher():
    zs, bs, zt, bt = _case(6)
    zs, bs = zs.requires_grad_(), bs.requires_grad_()
    zt, bt = zt.requires_grad_(), bt.requires_grad_()
    sum(_losses(zs, bs, zt, bt).values()).backward()
    assert zs.grad.abs().sum() > 0 and bs.grad.abs().sum() > 0
    assert zt.grad is None and bt.grad is None


def test_a_group_that_is_not_the_teacher_s_queries_is_refused_with_both_shapes():
    zs, bs, zt, bt = _case(7)
    with pytest.raises(ValueError, match="one to one.*group of"):
        _losses(zs[:, :, :4], bs[:, :, :4], zt, bt)


def test_the_weight_switches_it_on_and_scales_it_in_the_distiller(teacher, batch, criterion):  # noqa: F811
    only_qp = {"logits": {"enabled": False}, "feature": {"enabled": False}}
    off = Distiller(teacher, make(model_cfg()), DistillConfig(**only_qp))
    assert not KD_KEYS & set(off(*batch, criterion).loss_dict)  # 0 = off (official): no key, nothing computed

    def run(weight):
        cfg = DistillConfig(**only_qp, query_prior={"teacher_predictions_weight": weight})
        dist = Distiller(teacher, make(model_cfg()), cfg)
        return dist, dist(*batch, criterion)

    dist, out = run(1.0)
    assert KD_KEYS <= set(out.loss_dict) and all(out.loss_dict[k] > 0 for k in KD_KEYS)
    assert torch.allclose(out.loss, sum(out.loss_dict.values()), rtol=1e-5)
    _, out3 = run(3.0)  # same student init (make seeds it): the same pairs, three times the loss
    for k in KD_KEYS:
        assert out3.loss_dict[k].item() == pytest.approx(3 * out.loss_dict[k].item(), rel=1e-4)
    teacher.zero_grad(set_to_none=True)
    out.parts["query_prior"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dist.student.parameters())
    assert all(p.grad is None for p in teacher.parameters())
