"""``loss.recipe: family``: each family with a training recipe of its own is trained by transformers' own loss (its
denoising / one-to-many groups included), and the adapter still reports the matching queries only.

Checked per family against transformers itself: the same model, batch and random state give the loss
``model(pixel_values, labels=...)`` gives; the logged parts sum to it; the outputs equal the label-free forward's
shapes; the denoising / extra groups never leak into what the distiller sees; the families without a recipe keep
the set criterion.
"""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import LossConfig
from detrdistill.engine.tasks import DetectionTask
from detrdistill.models.family_loss import student_criterion
from detrdistill.models.family_loss import FamilyLoss, summarize_family_losses
from detrdistill.ops.criterion import SetCriterion
from tests.test_adapters import CASES, batch, make_adapter, model_frame_targets, own_queries

pytestmark = pytest.mark.usefixtures("one_thread")


def _recipe_cases() -> list[str]:
    """The contract-test cases whose family has a training recipe of its own."""
    from detrdistill.models.families import adapter_class
    from detrdistill.models.adapters.base import DetectorAdapter

    def has(name):
        cls = adapter_class(CASES[name][0])
        return cls is not None and cls._forward_family_loss is not DetectorAdapter._forward_family_loss
    return [n for n in CASES if has(n)]


def _criterion(adapter, recipe: str = "family"):
    return student_criterion(LossConfig(recipe=recipe), adapter)


@pytest.mark.parametrize("name", _recipe_cases())
def test_family_loss_equals_transformers_own_loss(name):
    adapter = make_adapter(name)
    adapter.train()
    pix, mask, targets = batch(name=name)
    crit = _criterion(adapter)
    assert isinstance(crit, FamilyLoss)
    torch.manual_seed(123)
    out = adapter(pix, mask, targets=targets, criterion=crit)
    torch.manual_seed(123)
    # the model as built (and saved) keeps transformers' auxiliary_loss: its own loss is the family's whole loss
    assert adapter.model.config.auxiliary_loss is True
    # transformers' own loss on the targets in the model's frame (fractions of the padded input for a family that
    # ignores the pixel mask: the adapter converts them)
    ref = adapter.model(pix, pixel_mask=mask, labels=model_frame_targets(name, targets, mask))
    assert torch.allclose(out.loss, ref.loss, rtol=1e-6, atol=1e-6)
    assert torch.allclose(sum(out.loss_dict.values()), out.loss, rtol=1e-5, atol=1e-5)
    assert any(k.startswith("dn_") for k in out.loss_dict) or not getattr(adapter.config, "num_denoising", 0), \
        "denoising groups were expected in the family's training forward"
    # the distiller sees the matching queries only, in the layout of the label-free forward
    plain = adapter(pix, mask)
    assert out.logits.shape == plain.logits.shape and out.boxes.shape == plain.boxes.shape
    assert out.queries.reference.shape[1] == adapter.num_queries
    out.loss.backward()
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in adapter.parameters())


@pytest.mark.parametrize("name", _recipe_cases())
def test_matching_queries_of_the_training_forward_decode_alone(name):
    """The matching queries never attend to the denoising ones, so decoding them alone reproduces them."""
    adapter = make_adapter(name)
    adapter.train()
    pix, mask, targets = batch(name=name)
    with torch.no_grad():
        out = adapter(pix, mask, targets=targets, criterion=_criterion(adapter))
        g = adapter.decode_group(out, own_queries(adapter, out))
    assert torch.allclose(g.logits, out.logits, atol=1e-4)
    assert torch.allclose(g.boxes, out.boxes, atol=1e-4)


@pytest.mark.parametrize("name", [n for n in CASES if n not in _recipe_cases()])
def test_families_without_a_recipe_keep_the_set_criterion(name):
    adapter = make_adapter(name)
    assert type(_criterion(adapter, "family")) is SetCriterion
    assert type(_criterion(adapter, "set")) is SetCriterion


@pytest.mark.parametrize("name", _recipe_cases())
def test_set_recipe_trains_the_matching_queries_with_the_set_criterion(name):
    adapter = make_adapter(name)
    adapter.train()
    pix, mask, targets = batch(name=name)
    crit = _criterion(adapter, "set")
    assert type(crit) is SetCriterion
    loss, parts = DetectionTask(adapter, crit)(pix, mask, targets)
    assert set(parts) == {"cls", "bbox", "giou"} and torch.isfinite(loss)


def test_family_loss_delegates_fixed_assignment_calls_to_the_set_criterion():
    adapter = make_adapter("rt_detr")
    crit = _criterion(adapter)
    pix, mask, targets = batch()
    with torch.no_grad():
        out = adapter(pix, mask)
    a = torch.full(out.logits.shape[:3], -1, dtype=torch.long)
    a[:, 0, 0] = 0
    got = crit(out.logits, out.boxes, targets, assignments=a)
    want = crit.set_criterion(out.logits, out.boxes, targets, assignments=a)
    assert torch.equal(got.loss, want.loss)


def test_summary_groups_stages_and_denoising_and_keeps_the_total():
    d = {"loss_vfl": torch.tensor(1.0), "loss_vfl_aux_0": torch.tensor(2.0), "loss_vfl_dn_0": torch.tensor(3.0),
         "loss_bbox_dn_1": torch.tensor(4.0), "loss_giou_enc_0": torch.tensor(5.0), "loss_fgl": torch.tensor(6.0)}
    s = summarize_family_losses(d)
    assert {k: float(v) for k, v in s.items()} == {"vfl": 3.0, "dn_vfl": 3.0, "dn_bbox": 4.0, "enc_giou": 5.0,
                                                    "fgl": 6.0}
    assert float(sum(s.values())) == float(sum(d.values()))
