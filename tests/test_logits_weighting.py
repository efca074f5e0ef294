"""The logits term's optional weightings (``distill.logits.class_loss=quality_focal``,
``distill.logits.box_weighting=teacher_score``): each against a direct computation, the properties that make them
what they are, and their wiring from the config. The official defaults are covered in test_distill_losses.py."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from detrdistill.config import DistillConfig
from detrdistill.distillation import HungarianLogitsDistillLoss
from detrdistill.distillation.terms import TermEnv, build_terms
from detrdistill.ops.boxes import cxcywh_to_xyxy, generalized_box_iou_pairs
from tests.test_distill_losses import rand_boxes


def _case(seed=0, L=2, B=2, N=6, C=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(L, B, N, C, generator=g) * 2, rand_boxes(L, B, N, g=g),
            torch.randn(L, B, N, C, generator=g) * 3, rand_boxes(L, B, N, g=g))


def _reference(zs, bs, zt, bt, match, gamma=2.0):
    """Per stage, directly: quality focal class loss / Σ s, score-weighted L1 and 1 - GIoU / Σ s, summed over
    stages (weights 1, 5, 2); ``match`` [L, B, N] (every query matched)."""
    cls_total = l1_total = giou_total = 0.0
    for l in range(zs.shape[0]):
        cls = l1 = giou = s_sum = 0.0
        for b in range(zs.shape[1]):
            for i, j in enumerate(match[l, b].tolist()):
                p, q = zt[l, b, j].sigmoid(), zs[l, b, i].sigmoid()
                bce = F.binary_cross_entropy(q.double(), p.double(), reduction="none")
                cls += float(((p - q).abs().double() ** gamma * bce).sum())
                s = float(p.max())
                s_sum += s
                l1 += s * float((bs[l, b, i] - bt[l, b, j]).abs().sum())
                giou += s * float(1 - generalized_box_iou_pairs(cxcywh_to_xyxy(bs[l, b, i]),
                                                                  cxcywh_to_xyxy(bt[l, b, j])))
        norm = max(1.0, s_sum)
        cls_total, l1_total, giou_total = cls_total + cls / norm, l1_total + l1 / norm, giou_total + giou / norm
    return cls_total, 5 * l1_total, 2 * giou_total


def test_weightings_equal_a_direct_computation():
    zs, bs, zt, bt = _case()
    loss = HungarianLogitsDistillLoss(class_loss="quality_focal", box_weighting="teacher_score")
    out = loss(zs, bs, zt, bt)
    cls, l1, giou = _reference(zs, bs, zt, bt, out.matching)
    assert out.losses["logits_cls"].item() == pytest.approx(cls, rel=1e-4)
    assert out.losses["logits_bbox"].item() == pytest.approx(l1, rel=1e-4)
    assert out.losses["logits_giou"].item() == pytest.approx(giou, rel=1e-4)


def test_quality_focal_is_zero_at_equality_and_positive_otherwise():
    zs, bs, zt, bt = _case(1)
    loss = HungarianLogitsDistillLoss(class_loss="quality_focal")
    assert loss(zt.clone(), bt.clone(), zt, bt).losses["logits_cls"].abs() < 1e-7  # plain BCE: the entropy floor
    assert HungarianLogitsDistillLoss()(zt.clone(), bt.clone(), zt, bt).losses["logits_cls"] > 0.1
    prev = 0.0
    for s in (0.1, 0.5, 1.0):
        c = loss(zt + s * zs, bt, zt, bt).losses["logits_cls"].item()
        assert c > prev
        prev = c


def test_teacher_score_weighting_ignores_background_boxes_and_equals_uniform_on_confident_ones():
    zs, bs, zt, bt = _case(2, L=1, B=1, N=4)
    zt = torch.full_like(zt, -12.0)
    zt[0, 0, 0, 1] = 12.0  # one confident teacher prediction, three background ones
    ident = torch.arange(4).view(1, 1, 4)
    weighted = HungarianLogitsDistillLoss(box_weighting="teacher_score")
    box = lambda o: (o.losses["logits_bbox"] + o.losses["logits_giou"]).item()  # noqa: E731
    base = box(weighted(zs, bs, zt, bt, matching=ident))
    assert base > 0.5
    moved_bg, moved_fg = bs.clone(), bs.clone()
    moved_bg[0, 0, 1:] = bt[0, 0, 1:]  # the background queries' boxes onto the teacher's: nothing changes
    moved_fg[0, 0, 0] = bt[0, 0, 0]    # the confident one's onto the teacher's: nothing is left
    assert box(weighted(zs, moved_bg, zt, bt, matching=ident)) == pytest.approx(base, abs=1e-3)
    assert box(weighted(zs, moved_fg, zt, bt, matching=ident)) < 1e-3
    # the class term is untouched by the box weighting
    assert weighted(zs, bs, zt, bt, matching=ident).losses["logits_cls"] == pytest.approx(
        HungarianLogitsDistillLoss()(zs, bs, zt, bt, matching=ident).losses["logits_cls"].item())
    # every teacher prediction confident: the same as the official uniform weighting
    zt_all = torch.full_like(zt, -12.0)
    zt_all[..., 0] = 12.0
    uniform = HungarianLogitsDistillLoss()(zs, bs, zt_all, bt, matching=ident)
    assert box(weighted(zs, bs, zt_all, bt, matching=ident)) == pytest.approx(box(uniform), rel=1e-4)


def test_gradients_reach_the_student_never_the_teacher():
    zs, bs, zt, bt = _case(3)
    zs.requires_grad_(True), bs.requires_grad_(True), zt.requires_grad_(True), bt.requires_grad_(True)
    out = HungarianLogitsDistillLoss(class_loss="quality_focal", box_weighting="teacher_score")(zs, bs, zt, bt)
    sum(out.losses.values()).backward()
    assert zs.grad.abs().sum() > 0 and bs.grad.abs().sum() > 0
    assert zt.grad is None or zt.grad.abs().sum() == 0
    assert bt.grad is None or bt.grad.abs().sum() == 0


def test_bad_values_are_refused_with_the_option_named():
    with pytest.raises(ValueError, match="class_loss"):
        HungarianLogitsDistillLoss(class_loss="focal")
    with pytest.raises(ValueError, match="box_weighting"):
        HungarianLogitsDistillLoss(box_weighting="score")
    zs, bs, zt, bt = _case(4, C=4)  # both softmax: no per-class probabilities to modulate
    with pytest.raises(ValueError, match="quality_focal"):
        HungarianLogitsDistillLoss(class_loss="quality_focal")(zs, bs, zt, bt, student_activation="softmax",
                                                                teacher_activation="softmax")


def test_the_config_reaches_the_loss():
    cfg = DistillConfig.model_validate({"logits": {"class_loss": "quality_focal", "focal_gamma": 1.5,
                                                   "box_weighting": "teacher_score"},
                                        "feature": {"enabled": False}, "query_prior": {"enabled": False}})
    (term,) = build_terms(TermEnv(cfg, torch.nn.Identity(), torch.nn.Identity()))
    assert (term.loss.class_loss, term.loss.focal_gamma, term.loss.box_weighting) == (
        "quality_focal", 1.5, "teacher_score")
    default = HungarianLogitsDistillLoss()
    assert (default.class_loss, default.box_weighting) == ("bce", "uniform")  # the official form by default
