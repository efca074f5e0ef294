"""``model.backbone.batch_norm``: a from-scratch backbone's frozen BatchNorms (identities) made trainable, the same
function at the start, statistics that move in training, and a saved model that loads back frozen at them."""
import pytest
import torch
from torch import nn

from detrdistill.errors import ConfigError
from detrdistill.models import build_model
from detrdistill.models.backbone import backbone_module
from detrdistill.models.backbone_norm import is_frozen_batch_norm, train_backbone_batch_norms
from tests.test_adapters import ID2LABEL, batch, case_params, model_cfg

FAMILIES = [p for p in case_params() if p.values[0] in ("deformable_detr", "rt_detr", "adamixer")]


def _cfg(name, policy, freeze="none"):
    cfg = model_cfg(name)
    return cfg.model_copy(update={"backbone": cfg.backbone.model_copy(update={"batch_norm": policy,
                                                                            "freeze": freeze})})


def _build(name, policy, seed=0):
    torch.manual_seed(seed)
    return build_model(_cfg(name, policy), ID2LABEL)


def _norms(model):
    mods = list(backbone_module(model).modules())
    return ([m for m in mods if is_frozen_batch_norm(m)],
            [m for m in mods if isinstance(m, nn.BatchNorm2d)])


def _logits(model, name):
    pix, mask, _ = batch(0, name)
    with torch.no_grad():
        return model(pixel_values=pix, pixel_mask=mask).logits


@pytest.mark.parametrize("name", FAMILIES)
def test_train_swaps_every_frozen_norm_and_starts_as_the_same_function(name):
    frozen, train = _build(name, "frozen"), _build(name, "train")
    f_frozen, f_bn = _norms(frozen)
    t_frozen, t_bn = _norms(train)
    assert f_frozen and not f_bn  # transformers' default: every backbone norm frozen
    assert not t_frozen and len(t_bn) == len(f_frozen)
    assert all(p.requires_grad for m in t_bn for p in m.parameters())
    torch.testing.assert_close(_logits(train.eval(), name), _logits(frozen.eval(), name))


@pytest.mark.parametrize("name", FAMILIES)
def test_the_swap_keeps_statistics_and_affine_values(name):
    model = _build(name, "frozen").eval()
    g = torch.Generator().manual_seed(1)
    for m in _norms(model)[0]:  # as a pretrained backbone's: values other than the identity's
        for buf, lo in (("weight", 0.5), ("bias", -0.2), ("running_mean", -0.2), ("running_var", 0.5)):
            getattr(m, buf).copy_(lo + torch.rand(getattr(m, buf).shape, generator=g) * 0.5)
    before = _logits(model, name)
    assert train_backbone_batch_norms(model) > 0
    torch.testing.assert_close(_logits(model, name), before)  # eval mode: the running statistics copied


@pytest.mark.parametrize("name", FAMILIES)
def test_trained_norms_learn_and_a_saved_model_loads_back_frozen_at_them(name, tmp_path):
    model = _build(name, "train").train()
    pix, mask, targets = batch(0, name)
    out = model(pixel_values=pix, pixel_mask=mask, labels=targets)
    out.loss.backward()
    _, norms = _norms(model)
    assert all(m.weight.grad is not None for m in norms)  # gradients reach the norms' affine parameters
    assert any(not torch.allclose(m.running_mean, torch.zeros_like(m.running_mean)) for m in norms)
    model.eval()
    before = _logits(model, name)
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path).eval()
    frozen, bn = _norms(loaded)
    assert frozen and not bn  # the family's own class, frozen ...
    torch.testing.assert_close(_logits(loaded, name), before)  # ... at the statistics it learned


def test_train_with_a_fixed_backbone_is_refused():
    with pytest.raises(ConfigError, match="batch_norm"):
        build_model(_cfg("deformable_detr", "train", freeze="all"), ID2LABEL)


@pytest.mark.parametrize("name", FAMILIES)
def test_a_fixed_stem_keeps_its_norms_frozen_and_the_rest_train(name):
    torch.manual_seed(0)
    model = build_model(_cfg(name, "train", freeze="stem"), ID2LABEL).train()
    backbone = backbone_module(model)
    stem_prefix = next(p for p in ("embedder.", "embeddings.") if any(n.startswith(p) for n, _ in
                                                                      backbone.named_parameters()))
    stem = {n: m for n, m in backbone.named_modules() if (n + ".").startswith(stem_prefix)}
    assert any(is_frozen_batch_norm(m) for m in stem.values())  # the stem's norms stay frozen ...
    assert not any(isinstance(m, nn.BatchNorm2d) for m in stem.values())
    rest = [m for n, m in backbone.named_modules() if n not in stem]
    assert any(isinstance(m, nn.BatchNorm2d) for m in rest) and not any(is_frozen_batch_norm(m) for m in rest)
    stats = [m.running_mean.clone() for m in stem.values() if is_frozen_batch_norm(m)]
    pix, mask, targets = batch(0, name)
    model(pixel_values=pix, pixel_mask=mask, labels=targets).loss.backward()
    after = [m.running_mean for m in stem.values() if is_frozen_batch_norm(m)]
    assert all(torch.equal(a, b) for a, b in zip(stats, after))  # ... and their statistics do not move in training
