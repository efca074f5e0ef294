"""One DETRDistill step with D-FINE / DEIMv2 as teacher and as student: same-family pairs and cross-family pairs with
Deformable DETR and RT-DETR. Every term of the method (logits, feature, query prior) is logged and finite, gradients
reach the student (and the distillation modules) and never the teacher; a D-FINE-style teacher reports every one of
its stages although it runs in eval mode; the student trains with its own family recipe (loss.recipe: family).
"""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig, LossConfig
from detrdistill.distillation import Distiller
from detrdistill.models.family_loss import student_criterion
from detrdistill.models.family_loss import FamilyLoss
from tests.test_adapters import NQ, STAGES, batch, make_adapter

pytestmark = pytest.mark.usefixtures("one_thread")

# teacher case -> student case (tests/test_adapters.py CASES); teacher width 64, student width 32
PAIRS = [("d_fine", "d_fine"), ("deimv2", "deimv2"), ("d_fine", "deformable_detr"), ("deformable_detr", "d_fine"),
         ("deimv2", "rt_detr"), ("rt_detr", "deimv2"), ("d_fine", "deimv2")]
RECIPE_FAMILIES = {"d_fine", "deimv2", "rt_detr"}
# the query-prior group of a recipe student is trained by its family's own loss (group_loss=family, the default)
QUERY_PRIOR_KEYS = {"d_fine": {"vfl", "bbox", "giou", "fgl", "ddf"}, "deimv2": {"mal", "bbox", "giou", "fgl", "ddf"},
                    "rt_detr": {"vfl", "bbox", "giou"}, "deformable_detr": {"cls", "bbox", "giou"}}


def _nonzero(params) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


@pytest.mark.parametrize("t_name,s_name", PAIRS, ids=[f"{t}-to-{s}" for t, s in PAIRS])
def test_one_detrdistill_step(t_name, s_name):
    teacher = make_adapter(t_name, d_model=64, seed=1)
    student = make_adapter(s_name, d_model=32, seed=2)
    dist = Distiller(teacher, student, DistillConfig())
    dist.train()
    criterion = student_criterion(LossConfig(recipe="family"), student)
    assert isinstance(criterion, FamilyLoss) == (s_name in RECIPE_FAMILIES)
    pix, mask, targets = batch()
    out = dist(pix, mask, targets, criterion)

    # the teacher ran in eval mode and still reports every stage; the student its matching queries only
    assert not any(m.training for m in teacher.modules())
    assert out.teacher.logits.shape[:3] == (teacher.num_stages, 2, NQ) == (STAGES, 2, NQ)
    assert out.student.logits.shape[:3] == (STAGES, 2, NQ)
    keys = set(out.loss_dict)
    assert {"logits_cls", "logits_bbox", "logits_giou", "feature"} <= keys
    assert {k.removeprefix("query_prior_") for k in keys if k.startswith("query_prior_")} == QUERY_PRIOR_KEYS[s_name]
    if s_name in ("d_fine", "deimv2"):  # the student's own recipe, denoising groups included
        assert {"fgl", "ddf"} <= keys and any(k.startswith("dn_") for k in keys)
    assert all(torch.isfinite(v) for v in out.loss_dict.values())
    assert torch.isfinite(out.loss)

    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher got gradients"
    grads = dict(dist.named_trainable_parameters())
    for part in ("student.model.model.decoder.", "feature_loss.", "query_projection."):
        assert _nonzero(p for n, p in grads.items() if n.startswith(part)), part
    assert _nonzero(p for n, p in grads.items() if n.startswith("student.") and "backbone" in n or
                    n.startswith("student.model.model.conv_encoder.model.")), "student backbone"

