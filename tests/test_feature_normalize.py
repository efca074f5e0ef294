"""``distill.feature.normalize``: parameter-free GroupNorm of both sides of the feature terms, turned on by 'auto'
for families whose encoder inputs have no normalisation layer (DETR, Conditional DETR, DAB-DETR)."""
from __future__ import annotations

import logging

import pytest
import torch

from detrdistill.config import DistillConfig, ModelConfig
from detrdistill.distillation import Distiller
from detrdistill.distillation.baselines import FitNetLoss
from detrdistill.distillation.feature import FeatureDistillLoss, group_normalize, norm_groups
from detrdistill.distillation.terms import TermEnv, normalize_features

from .test_distiller import BACKBONE, make, model_cfg


def _maps(seed: int, c: int = 16, scale: float = 1.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [scale * torch.randn(2, c, 6, 5, generator=g) + 3.0 * scale]


def test_norm_groups_divide_the_width():
    assert [norm_groups(c) for c in (256, 64, 48, 24, 7)] == [32, 32, 24, 24, 7]
    x = torch.randn(2, 48, 4, 4) * 100 + 50
    y = group_normalize(x).view(2, 24, -1)
    assert torch.allclose(y.mean(-1), torch.zeros(2, 24), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(2, 24), atol=1e-3)


def test_normalized_loss_ignores_the_scale_of_the_features():
    s, t = _maps(0), _maps(1)
    masks = [torch.rand(2, 6, 5, generator=torch.Generator().manual_seed(2)) * 0.9 + 0.1]
    plain, normed = FeatureDistillLoss([16], [16]), FeatureDistillLoss([16], [16], normalize=True)
    big_s, big_t = [m * 500 for m in s], [m * 500 for m in t]
    assert plain(big_s, big_t, masks).item() == pytest.approx(500 ** 2 * plain(s, t, masks).item(), rel=1e-4)
    assert normed(big_s, big_t, masks).item() == pytest.approx(normed(s, t, masks).item(), rel=1e-4)
    assert 0 < normed(s, t, masks).item() < plain(s, t, masks).item()
    assert normed(t, t, masks).item() == pytest.approx(0.0, abs=1e-6)  # zero when the student equals the teacher
    fit = FitNetLoss([16], [16], normalize=True)
    assert fit(big_s, big_t).item() == pytest.approx(fit(s, t).item(), rel=1e-4)


def test_gradient_reaches_the_student_through_the_norm():
    s = [m.requires_grad_() for m in _maps(0, scale=200.0)]
    FeatureDistillLoss([16], [16], normalize=True)(s, _maps(1, scale=200.0)).backward()
    assert s[0].grad is not None and torch.isfinite(s[0].grad).all() and s[0].grad.abs().sum() > 0


def _family(name: str):
    return make(ModelConfig(family=name, d_model=32, num_heads=4, ffn_dim=64, encoder_layers=1, decoder_layers=2,
                            num_queries=10, backbone=BACKBONE))


@pytest.mark.parametrize("teacher_family,student_family,mode,source,expected", [
    ("conditional_detr", "conditional_detr", "auto", "encoder_inputs", True),
    ("deformable_detr", "detr", "auto", "encoder_inputs", True),  # either side plain: both normalised
    ("deformable_detr", "deformable_detr", "auto", "encoder_inputs", False),  # official: GroupNorm'ed already
    ("conditional_detr", "conditional_detr", "auto", "encoder_outputs", False),  # encoder memory is layer-normed
    ("conditional_detr", "conditional_detr", "none", "encoder_inputs", False),
    ("deformable_detr", "deformable_detr", "group", "encoder_inputs", True),
])
def test_auto_normalizes_plain_projections(teacher_family, student_family, mode, source, expected):
    cfg = DistillConfig(feature={"normalize": mode, "source": source})
    env = TermEnv(cfg, _family(teacher_family), _family(student_family))
    assert normalize_features(env) is expected


def test_distiller_builds_normalized_feature_terms(caplog):
    teacher, student = _family("conditional_detr"), _family("conditional_detr")
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        dist = Distiller(teacher, student, DistillConfig(fitnet={"enabled": True}))
    # resolved once for both the feature and the FitNet term
    assert sum("distill.feature.normalize=auto" in r.getMessage() for r in caplog.records) == 1
    losses = {type(m).__name__: m for m in dist.modules() if isinstance(m, FeatureDistillLoss)}
    assert losses and all(m.normalize for m in losses.values()), losses
    deformable = Distiller(make(model_cfg(d_model=64)), make(model_cfg()), DistillConfig())
    assert not any(m.normalize for m in deformable.modules() if isinstance(m, FeatureDistillLoss))
