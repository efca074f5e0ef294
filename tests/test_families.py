"""The family registry: a family declared once shows up in the family check, build, adapter dispatch and
checkpoint loading -- also when its model classes are the project's own, not transformers'."""
from __future__ import annotations

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection

from detrdistill.config import load_config
from detrdistill.errors import UnsupportedFamilyError
from detrdistill.models.adapters.detr import DetrAdapter, detr_config_kwargs
from detrdistill.models.build import build_model, load_detector
from detrdistill.models.families import (FamilySpec, family_names, family_of, get_adapter, register_family,
                                         unregister_family)
from detrdistill.models.family_index import check_family

ID2LABEL = {0: "a", 1: "b"}
TINY = ["model.d_model=32", "model.num_heads=2", "model.ffn_dim=32", "model.encoder_layers=1",
        "model.decoder_layers=2", "model.num_queries=5", "model.backbone.embedding_size=8",
        "model.backbone.hidden_sizes=[8,16]", "model.backbone.depths=[1,1]"]


class FakeConfig(DetrConfig):
    model_type = "fake-detr"


class FakeModel(DetrForObjectDetection):
    config_class = FakeConfig


class FakeAdapter(DetrAdapter):
    family = "fake_detr"
    model_types = ("fake-detr",)


BUILT = []


@pytest.fixture
def fake_family():
    spec = FamilySpec(name="fake_detr", adapter=FakeAdapter, model_types=("fake-detr",), config_class=FakeConfig,
                      model_class=FakeModel, config_kwargs=detr_config_kwargs, after_build=BUILT.append,
                      load_kwargs={"auxiliary_loss": False})
    register_family(spec)
    yield spec
    unregister_family("fake_detr")


def test_unregistered_family_is_refused_by_the_family_check():
    with pytest.raises(UnsupportedFamilyError, match="unknown model family 'fake_detr'"):
        check_family(load_config(None, ["model.family=fake_detr"]).model.family)


def test_registered_family_is_validated_built_adapted_and_reloaded(fake_family, tmp_path):
    assert "fake_detr" in family_names() and family_of("fake-detr") == "fake_detr"
    assert check_family("fake_detr") == "fake_detr"
    cfg = load_config(None, ["model.family=fake_detr", *TINY])
    BUILT.clear()
    torch.manual_seed(0)
    model = build_model(cfg.model, ID2LABEL)
    assert type(model) is FakeModel and BUILT == [model]  # the family's fix-up ran on the fresh model
    adapter = get_adapter(model)
    assert type(adapter) is FakeAdapter
    model.save_pretrained(tmp_path / "m")
    reloaded = load_detector(tmp_path / "m")  # not in transformers' Auto mapping: loaded through the spec
    assert type(reloaded) is FakeModel and reloaded.config.auxiliary_loss is False
    x = torch.randn(1, 3, 64, 64)
    model.eval(), reloaded.eval()
    assert torch.allclose(get_adapter(reloaded)(x).logits, adapter(x).logits)


def test_a_taken_model_type_is_refused():
    with pytest.raises(ValueError, match="already belongs"):
        register_family(FamilySpec(name="detr_twin", adapter=DetrAdapter, model_types=("detr",),
                                   config_class="DetrConfig", model_class="DetrForObjectDetection",
                                   config_kwargs=detr_config_kwargs))
    assert "detr_twin" not in family_names()


def test_every_family_declares_a_known_model_type():
    from detrdistill.models.build import hf_config_class
    for name in family_names():
        assert family_of(hf_config_class(name).model_type) == name


def test_a_renamed_decoder_kwarg_fails_when_the_adapter_is_built():
    import types

    from detrdistill.errors import TransformersAPIError

    cfg = load_config(None, ["model.family=detr", *TINY])
    model = build_model(cfg.model, ID2LABEL)
    get_adapter(model)  # the installed transformers fits

    def renamed(self, inputs_embeds=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, spatial_pos_embeddings=None, object_queries_position_embeddings=None,
                **kwargs):
        raise AssertionError("never called")
    model.model.decoder.forward = types.MethodType(renamed, model.model.decoder)
    with pytest.raises(TransformersAPIError, match=r"transformers \S+ has no keyword argument 'spatial_position_embeddings'"):
        get_adapter(model)
