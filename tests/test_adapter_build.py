"""Model-layer tests of building and loading: the backbone is trainable after build and after from_pretrained (freeze
levels applied, predictions identical after the round trip), checkpoint errors, the config-to-transformers mapping
with overrides, and the one-line refusal of a model no family adapts. The tiny cases and helpers are
tests/test_adapters.py's.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detrdistill.config import BackboneConfig
from detrdistill.errors import UnsupportedFamilyError
from detrdistill.models import build_model, count_parameters, get_adapter
from detrdistill.models.backbone import backbone_module
from detrdistill.models.build import load_detector
from tests.test_adapters import ID2LABEL, NQ, NUM_CLASSES, STEM, batch, case_params, make_adapter, model_cfg

pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------------------------- backbone / build
@pytest.mark.parametrize("name", case_params())
def test_backbone_trainable_and_pretrained_roundtrip(name, tmp_path):
    a = make_adapter(name).eval()
    bb = backbone_module(a.model)
    assert all(p.requires_grad for p in bb.parameters()), "backbone must be trainable after build (freeze=none)"
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        ref = a(pix, mask)
    a.save_pretrained(tmp_path)
    cfg = model_cfg(name).model_copy(update={"pretrained": str(tmp_path),
                                             "backbone": BackboneConfig(embedding_size=16,
                                                                        hidden_sizes=[16, 32, 64, 128],
                                                                        depths=[1, 1, 1, 1], freeze="stem")})
    loaded = get_adapter(build_model(cfg, ID2LABEL)).eval()
    lbb = backbone_module(loaded.model)
    stem = STEM.get(name, "embedder.")
    for n, p in lbb.named_parameters():
        assert p.requires_grad == (not n.startswith(stem)), n
    assert any(not p.requires_grad for p in lbb.parameters())
    with torch.no_grad():
        out = loaded(pix, mask)
    torch.testing.assert_close(out.logits, ref.logits, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.boxes, ref.boxes, atol=1e-6, rtol=0)
    full = load_detector(tmp_path, freeze="all")
    assert not any(p.requires_grad for p in backbone_module(full).parameters())
    assert any(p.requires_grad for p in full.parameters())


def test_pretrained_errors(tmp_path):
    a = make_adapter("detr")
    a.save_pretrained(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_model(model_cfg("detr", pretrained=str(tmp_path / "missing")), ID2LABEL)
    # other classes than the checkpoint's: re-headed by name (tests/test_pretrained.py), not refused
    relabelled = build_model(model_cfg("detr", pretrained=str(tmp_path / "ckpt")), {0: "x", 1: "y"})
    assert relabelled.config.id2label == {0: "x", 1: "y"}
    with pytest.raises(ValueError, match="model.family"):
        build_model(model_cfg("conditional_detr", pretrained=str(tmp_path / "ckpt")), ID2LABEL)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_detector(tmp_path / "empty")
    m = load_detector(tmp_path / "ckpt")
    assert m.config.auxiliary_loss is False and m.config.id2label == ID2LABEL


def test_build_config_mapping_and_overrides():
    m = build_model(model_cfg("deformable_detr", hf_overrides={"decoder_n_points": 2}), ID2LABEL)
    c = m.config
    assert (c.d_model, c.decoder_layers, c.encoder_layers, c.num_queries, c.decoder_n_points) == (32, 2, 1, NQ, 2)
    assert c.decoder_ffn_dim == 64 and c.decoder_attention_heads == 4 and c.num_feature_levels == 4
    assert c.backbone_config.model_type == "resnet" and c.num_labels == NUM_CLASSES
    with pytest.raises(ValueError, match="not_a_key"):
        build_model(model_cfg("detr", hf_overrides={"not_a_key": 1}), ID2LABEL)
    with pytest.raises(ValueError, match="id2label"):
        build_model(model_cfg("detr"), None)
    a = get_adapter(build_model(model_cfg("conditional_detr"), ID2LABEL))
    assert a.family == "conditional_detr" and a.num_queries == NQ and a.model.config.auxiliary_loss is False
    frozen = build_model(model_cfg("detr").model_copy(update={"backbone": BackboneConfig(
        embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], freeze="all")}), ID2LABEL)
    counts = count_parameters(frozen)
    assert counts.trainable == counts.total - sum(p.numel() for p in backbone_module(frozen).parameters())


# ----------------------------------------------------------------------------------------------- unsupported
def test_unsupported_family_fails_at_get_adapter():
    from transformers import YolosConfig, YolosForObjectDetection
    yolos = YolosForObjectDetection(YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=64, image_size=[64, 64], patch_size=16,
                                                num_detection_tokens=5, num_labels=3))
    with pytest.raises(UnsupportedFamilyError, match="yolos") as e:
        get_adapter(yolos)
    assert "deformable_detr" in str(e.value) and "detr" in str(e.value)
    with pytest.raises(UnsupportedFamilyError):
        get_adapter(nn.Linear(2, 2))
    assert issubclass(UnsupportedFamilyError, ValueError)
    # an adapter refuses a model of another family
    from detrdistill.models.adapters.detr import DetrAdapter
    with pytest.raises(UnsupportedFamilyError, match="deformable_detr"):
        DetrAdapter(build_model(model_cfg("deformable_detr"), ID2LABEL))



@pytest.mark.parametrize("family", ["deformable_detr", "d_fine", "rt_detr"])
def test_a_one_layer_decoder_builds_or_is_refused_by_name(family):
    """transformers cannot build some families with one decoder layer (it ties the later layers' box heads to the
    first and refuses a model with none): the user gets a ConfigError naming model.decoder_layers, never
    transformers' tie_weights_keys trace; a family that can build it does, with one stage."""
    from detrdistill.errors import ConfigError
    from tests.registry_models import tiny_family_cfg

    cfg = tiny_family_cfg(family).model_copy(update={"decoder_layers": 1})
    try:
        model = build_model(cfg, ID2LABEL)
    except ConfigError as e:
        assert str(e).startswith("model.decoder_layers=1:") and "use model.decoder_layers >= 2" in str(e)
        assert family != "rt_detr"  # RT-DETR builds a one-layer decoder (measured): it must not be refused
    else:
        assert family == "rt_detr", f"{family} built a one-layer decoder; update the refusal's wording"
        assert get_adapter(model).num_stages == 1
