"""What is specific to the D-FINE and DEIMv2 adapters, beyond the contract tests of tests/test_adapters.py.

Tiny random models of tests/test_adapters.py (d_model 32, 2 decoder layers, 30 queries, ResNet 16-128, constant
decoder / head parameters perturbed so the box distributions and the LQE are not trivially zero).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers.models.d_fine.modeling_d_fine import distance2bbox, inverse_sigmoid, weighting_function

from detrdistill.config import LossConfig
from detrdistill.models.family_loss import student_criterion
from detrdistill.errors import ConfigError, ModelError
from detrdistill.models import build_model, get_adapter
from detrdistill.models.adapters.d_fine import DFineAdapter
from detrdistill.models.adapters.deimv2 import Deimv2Adapter
from detrdistill.models.backbone import apply_backbone_freeze, backbone_module
from tests.test_adapters import (ID2LABEL, NQ, STAGES, batch, make_adapter, model_cfg, model_frame_targets,
                                 real_frame)

DFINE_FAMILIES = ("d_fine", "deimv2")

pytestmark = pytest.mark.usefixtures("one_thread")

# a tiny HGNetV2 (D-FINE's and DEIMv2's own backbone family), given through model.hf_overrides.backbone_config
HGNET = {"model_type": "hgnet_v2", "stem_channels": [3, 8, 8], "stage_in_channels": [8, 16, 32, 64],
         "stage_mid_channels": [8, 16, 32, 32], "stage_out_channels": [16, 32, 64, 128],
         "hidden_sizes": [16, 32, 64, 128], "stage_num_blocks": [1, 1, 1, 1],
         "stage_downsample": [False, True, True, True], "stage_light_block": [False, False, True, True],
         "stage_kernel_size": [3, 3, 5, 5], "stage_numb_of_layers": [2, 2, 2, 2],
         "out_features": ["stage2", "stage3", "stage4"]}


def _stages_by_hand(adapter, hf_inner) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's (logits, boxes) [L, B, N, .] recomputed from the decoder's per-layer hidden states (which the
    model reports for every layer in eval mode too) with the model's own heads, as D-FINE's decoder does."""
    dec = adapter.model.model.decoder
    h = hf_inner.intermediate_hidden_states                       # [L, B, N, d]
    project = weighting_function(dec.max_num_bins, dec.up, dec.reg_scale)
    ref0 = torch.sigmoid(hf_inner.init_reference_points)          # the decoder's input references
    ref_initial = torch.sigmoid(dec.pre_bbox_head(h[0]) + inverse_sigmoid(ref0))
    corners, previous, logits, boxes = 0, 0, [], []
    for layer in range(h.shape[0]):
        corners = dec.bbox_embed[layer](h[layer] + previous) + corners
        boxes.append(distance2bbox(ref_initial, dec.integral(corners, project), dec.reg_scale))
        logits.append(dec.lqe_layers[layer](dec.class_embed[layer](h[layer]), corners))
        previous = h[layer]
    return torch.stack(logits), torch.stack(boxes)


# ----------------------------------------------------------------------------------------------- eval-mode stages
@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_eval_mode_reports_every_stage_with_the_models_own_heads(family):
    a = make_adapter(family).eval()
    pix, mask, _ = batch()
    with torch.no_grad():
        out = a(pix, mask)
        hf = a.model(pix, pixel_mask=mask)
        inner = a.model.model(pix, pixel_mask=mask)
        logits, boxes = _stages_by_hand(a, inner)
    # transformers itself reports the eval_idx layer only in eval mode: the reason for DFineAdapter._every_stage
    assert hf.intermediate_logits.shape[1] == 1 and inner.intermediate_hidden_states.shape[0] == STAGES
    assert out.logits.shape[0] == STAGES
    torch.testing.assert_close(out.logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.boxes, real_frame(family, boxes, mask), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.embeddings, inner.intermediate_hidden_states, atol=0, rtol=0)
    # the model's own prediction is unchanged (exactly; boxes in the real image's frame), and the layers differ
    torch.testing.assert_close(out.logits[-1], hf.logits, atol=0, rtol=0)
    torch.testing.assert_close(out.boxes[-1], real_frame(family, hf.pred_boxes, mask), atol=1e-6, rtol=0)
    assert not torch.allclose(out.boxes[0], out.boxes[-1])
    # the distributions are not trivial (else the box / LQE maths above would go untested)
    assert float(inner.intermediate_predicted_corners.abs().max()) > 0.1


@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_every_stage_mode_touches_the_decoder_flag_only(family):
    a = make_adapter(family).eval()
    dec = a.model.model.decoder
    seen = []
    handle = dec.layers[0].register_forward_pre_hook(lambda m, args: seen.append((m.training, dec.training)))
    pix, mask, _ = batch()
    try:
        with torch.no_grad():
            a(pix, mask)
            a.decode_group(a(pix, mask), a(pix, mask).queries)
    finally:
        handle.remove()
    assert seen and all(s == (False, True) for s in seen), "layers stay in eval mode while the decoder reports all"
    assert not any(m.training for m in a.model.modules()), "every module is back in eval mode"
    with pytest.raises(ValueError):  # a forward failing inside the every-stage context restores the flag too
        a(pix[:, :2], mask)
    assert not dec.training


# ----------------------------------------------------------------------------------------------- family recipe
@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_family_forward_reports_matching_layers_without_pre_bbox_or_denoising(family):
    a = make_adapter(family).train()
    pix, mask, targets = batch()
    crit = student_criterion(LossConfig(recipe="family"), a)
    torch.manual_seed(5)
    out = a(pix, mask, targets=targets, criterion=crit)
    torch.manual_seed(5)
    a.model.config.auxiliary_loss = True
    ref = a.model(pix, pixel_mask=mask, labels=model_frame_targets(family, targets, mask))
    dn = int(ref.denoising_meta_values["dn_num_split"][0])
    assert dn > 0 and ref.intermediate_logits.shape[1] == STAGES + 1  # pre-bbox head + every layer
    torch.testing.assert_close(out.logits, ref.intermediate_logits[:, 1:, dn:].transpose(0, 1), atol=0, rtol=0)
    torch.testing.assert_close(out.boxes, real_frame(family, ref.intermediate_reference_points[:, 1:, dn:]
                                                     .transpose(0, 1), mask), atol=1e-6, rtol=0)
    assert out.logits.shape[2] == NQ
    # D-FINE's own losses over the box distributions are part of the recipe, with the denoising groups' own
    classification = "mal" if family == "deimv2" else "vfl"
    assert {classification, "bbox", "giou", "fgl", "ddf", f"dn_{classification}", "dn_fgl"} <= set(out.loss_dict)
    torch.testing.assert_close(out.loss, ref.loss, atol=1e-6, rtol=1e-6)


def test_deimv2_without_aux_loss_is_refused_because_transformers_then_matches_denoising_queries():
    """transformers' DEIMv2 loss splits the denoising queries off only when auxiliary_loss is set; D-FINE's always.
    Same logits, once with the denoising queries in front and once without: D-FINE's loss is the same, DEIMv2's is
    not (the denoising queries took part in the matching), so the adapter refuses that setting."""
    from transformers.loss.loss_d_fine import DFineForObjectDetectionLoss
    from transformers.loss.loss_deimv2 import Deimv2ForObjectDetectionLoss

    _, _, targets = batch()
    g = torch.Generator().manual_seed(0)
    dn, n = 10, NQ
    logits = torch.randn(2, dn + n, 5, generator=g)
    boxes = torch.rand(2, dn + n, 4, generator=g) * 0.5 + 0.25
    boxes[:, :dn] = torch.cat([t["boxes"][:1] for t in targets])[:, None]  # denoising queries sit on the GT
    meta = {"dn_num_split": [dn, n], "dn_num_group": 1, "dn_positive_idx": None}
    losses = {}
    for family, fn in (("d_fine", DFineForObjectDetectionLoss), ("deimv2", Deimv2ForObjectDetectionLoss)):
        config = make_adapter(family).model.config
        config.auxiliary_loss = False
        with_dn = fn(logits, targets, "cpu", boxes, config, denoising_meta_values=meta)[0]
        alone = fn(logits[:, dn:], targets, "cpu", boxes[:, dn:], config)[0]
        losses[family] = (float(with_dn), float(alone))
    assert losses["d_fine"][0] == pytest.approx(losses["d_fine"][1], rel=1e-6)
    assert losses["deimv2"][0] != pytest.approx(losses["deimv2"][1], rel=1e-3)

    a = make_adapter("deimv2").train()
    pix, mask, targets = batch()
    crit = student_criterion(LossConfig(recipe="family", aux_loss=False), a)
    with pytest.raises(ConfigError, match="loss.aux_loss"):
        a(pix, mask, targets=targets, criterion=crit)


# ----------------------------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_eval_idx_other_than_the_last_layer_is_refused(family):
    torch.manual_seed(0)
    model = build_model(model_cfg(family, hf_overrides={"eval_idx": 0}), ID2LABEL)
    pix, mask, _ = batch()
    with pytest.raises(IndexError):  # transformers 5.25: more decoder layers than box heads
        model.eval()(pix, pixel_mask=mask)
    with pytest.raises(ModelError, match="eval_idx"):
        get_adapter(model)


def test_deimv2_front_ends_without_per_level_projections_are_refused():
    torch.manual_seed(0)
    lite = build_model(model_cfg("deimv2", hf_overrides={"encoder_type": "lite"}), ID2LABEL)
    with pytest.raises(ModelError, match="encoder_type"):
        Deimv2Adapter(lite)
    dino = {"model_type": "dinov3_vit", "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
            "intermediate_size": 64, "patch_size": 16, "out_indices": [1, 2, 3]}
    vit = build_model(model_cfg("deimv2", hf_overrides={"backbone_config": dino}), ID2LABEL)
    with pytest.raises(ModelError, match="dinov3_vit"):
        Deimv2Adapter(vit)


def test_adapters_refuse_each_others_models():
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="d_fine"):
        DFineAdapter(build_model(model_cfg("deimv2"), ID2LABEL))
    with pytest.raises(ValueError, match="deimv2"):
        Deimv2Adapter(build_model(model_cfg("d_fine"), ID2LABEL))
    assert type(make_adapter("d_fine")) is DFineAdapter and type(make_adapter("deimv2")) is Deimv2Adapter


# ----------------------------------------------------------------------------------------------- front end
@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_features_masks_and_the_ignored_pixel_mask(family):
    a = make_adapter(family).eval()
    pix, mask, _ = batch()
    with torch.no_grad():
        out = a(pix, mask)
        unmasked = a.model(pix)
        masked = a.model(pix, pixel_mask=mask)
        inner = a.model.model
        if family == "deimv2":
            feats = inner.conv_encoder.model(pix).feature_maps
            proj = [p(f) for p, f in zip(inner.conv_encoder.encoder_input_proj, feats)]
        else:
            proj = [p(f) for p, (f, _) in zip(inner.encoder_input_proj, inner.backbone(pix, mask))]
    # the model never reads the pixel mask (no "pixel_mask" capability; its processor pads to a fixed square)
    torch.testing.assert_close(masked.logits, unmasked.logits, atol=0, rtol=0)
    for mine, theirs in zip(out.encoder_inputs, proj):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
    for mine, theirs in zip(out.encoder_outputs, masked.encoder_last_hidden_state):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)
    for m, level in zip(out.feature_masks, out.encoder_inputs):
        assert torch.equal(m, nn.functional.interpolate(mask[None].float(), size=level.shape[-2:]).bool()[0])
    # the backbone (freezing, parameter groups) holds the transformers backbone and not DEIMv2's input projections
    assert any(m is backbone_module(a.model) for m in a.backbone.modules())
    assert not any("input_proj" in n for n, _ in a.backbone.named_parameters())


@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_hgnetv2_backbone_through_hf_overrides(family):
    torch.manual_seed(0)
    model = build_model(model_cfg(family, hf_overrides={"backbone_config": HGNET}), ID2LABEL)
    bb = backbone_module(model)
    assert type(bb).__name__ == "HGNetV2Backbone"
    apply_backbone_freeze(model, "stem")
    assert not any(p.requires_grad for n, p in bb.named_parameters() if n.startswith("embedder."))
    assert all(p.requires_grad for n, p in bb.named_parameters() if not n.startswith("embedder."))
    a = get_adapter(model).eval()
    pix, mask, _ = batch()
    with torch.no_grad():
        out = a(pix, mask)
        hf = a.model(pix, pixel_mask=mask)
    torch.testing.assert_close(out.logits[-1], hf.logits, atol=0, rtol=0)
    assert [x.shape[1] for x in out.encoder_inputs] == a.feature_channels == [32] * 3


@pytest.mark.parametrize("family", DFINE_FAMILIES)
def test_backbone_gets_the_backbone_learning_rate(family):
    """optim.backbone_lr_mult reaches the transformers backbone wherever the family keeps it (DEIMv2:
    model.conv_encoder.model, a name without "backbone"), and nothing else of the detector."""
    from detrdistill.config import OptimConfig
    from detrdistill.engine.optim import param_groups

    a = make_adapter(family)
    groups = {g["name"]: g for g in param_groups(a, OptimConfig(lr=1e-3, backbone_lr_mult=0.1))}
    assert {id(p) for p in groups["backbone"]["params"]} == {id(p) for p in backbone_module(a.model).parameters()}
    assert groups["backbone"]["lr"] == pytest.approx(1e-4)
