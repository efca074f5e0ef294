"""LW-DETR and RF-DETR beyond the contract tests: the Group-DETR query groups, their loss, the size rules of their ViT
backbones, the config mapping, freezing, and a DETRDistill step with either family as teacher and as student.

Tiny random models from :mod:`tests.test_adapters` (d_model 32, 2 decoder layers, 30 queries, 3 query groups).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detrdistill.config import BackboneConfig, DistillConfig, LossConfig, ModelConfig
from detrdistill.distillation import Distiller
from detrdistill.models.family_loss import student_criterion
from detrdistill.errors import ConfigError, InputSizeError
from detrdistill.models.adapters.lw_detr_base import weighted_group_losses
from detrdistill.models.backbone import backbone_module
from detrdistill.models.build import build_model
from detrdistill.models.families import InputSides, family_spec
from detrdistill.models.family_loss import FamilyLoss
from detrdistill.models.outputs import QueryGroup
from detrdistill.ops.criterion import SetCriterion
from tests.test_adapters import ID2LABEL, NQ, batch, make_adapter, model_cfg, slice_group

pytestmark = pytest.mark.usefixtures("one_thread")

LW_RF_FAMILIES = ("lw_detr", "rf_detr")
GROUPS = 3  # group_detr of the test cases


def vit_cfg(name: str, **fields) -> ModelConfig:
    """A tiny config of ``name`` with any field set (``model_cfg`` fixes the depth)."""
    return model_cfg(name).model_copy(update=fields)


def _eval_batch_norms(model: nn.Module) -> None:
    """LW-DETR's projector has BatchNorm: train mode normalises with batch statistics. Fixing them isolates what the
    query groups do from what train-mode BatchNorm does."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


# ----------------------------------------------------------------------------------------------- query groups
@pytest.mark.parametrize("name", LW_RF_FAMILIES)
def test_train_mode_runs_every_group_and_reports_the_inference_group(name):
    a = make_adapter(name).train()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
        hf = a.model(pix, pixel_mask=mask)
        assert hf.logits.shape[1] == GROUPS * NQ, "train mode runs every query group"
        torch.testing.assert_close(out.logits[-1], hf.logits[:, :NQ], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.boxes[-1], hf.pred_boxes[:, :NQ], atol=1e-5, rtol=0)
        assert out.queries.content.shape[1] == out.queries.reference.shape[1] == NQ
        _eval_batch_norms(a.model)
        trained = a(pix, mask)
        a.eval()
        inference = a(pix, mask)
    # the first group is what eval mode runs alone: the other groups never reach it
    torch.testing.assert_close(trained.logits, inference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(trained.boxes, inference.boxes, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", LW_RF_FAMILIES)
def test_decode_group_is_one_group_in_train_mode(name):
    """In train mode the decoder's self-attention splits its queries into group_detr blocks; an extra group of 7
    (not a multiple of 3) is decoded as one group, exactly as in eval mode, and group_detr is restored."""
    a = make_adapter(name).eval()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
        group = slice_group(out.queries, 7)
        inference = a.decode_group(out, group)
        a.train()
        trained = a.decode_group(out, group)
    assert trained.logits.shape[2] == 7
    torch.testing.assert_close(trained.logits, inference.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(trained.boxes, inference.boxes, atol=1e-5, rtol=0)
    assert a.model.config.group_detr == GROUPS

    def fail(module, args, kwargs):
        raise RuntimeError("decoder failed")
    handle = a.model.model.decoder.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="decoder failed"):
            a.decode_group(out, group)
    finally:
        handle.remove()
    assert a.model.config.group_detr == GROUPS


@pytest.mark.parametrize("name", LW_RF_FAMILIES)
def test_family_recipe_trains_every_group_set_recipe_the_first(name):
    """transformers' group loss supervises all groups (each row block of the query table gets a gradient); the set
    criterion sees the reported first group only, the other groups' rows get none."""
    pix, mask, targets = batch(name=name)
    rows = {}
    for recipe in ("family", "set"):
        a = make_adapter(name).train()
        crit = student_criterion(LossConfig(recipe=recipe), a)
        assert isinstance(crit, FamilyLoss) == (recipe == "family")
        out = a(pix, mask, targets=targets, criterion=crit)
        out.loss.backward()
        grad = a.model.model.query_feat.weight.grad.abs().sum(-1)  # [groups * N]
        rows[recipe] = [float(grad[g * NQ:(g + 1) * NQ].sum()) for g in range(GROUPS)]
    assert all(r > 0 for r in rows["family"])
    assert rows["set"][0] > 0 and rows["set"][1:] == [0.0] * (GROUPS - 1)


def test_group_losses_are_weighted_and_named_per_term():
    class Cfg:
        class_loss_coefficient, bbox_loss_coefficient, giou_loss_coefficient = 2.0, 5.0, 3.0
    raw = {"loss_ce": 1.0, "loss_bbox": 1.0, "loss_giou": 1.0, "loss_ce_0": 1.0, "loss_giou_1": 2.0,
           "loss_ce_enc": 1.0, "loss_bbox_enc": 0.5, "cardinality_error": 7.0, "cardinality_error_enc": 7.0,
           "cardinality_error_0": 7.0}
    out = weighted_group_losses({k: torch.tensor(v) for k, v in raw.items()}, Cfg)
    assert {k: float(v) for k, v in out.items()} == {
        "loss_ce": 2.0, "loss_bbox": 5.0, "loss_giou": 3.0, "loss_ce_aux_0": 2.0, "loss_giou_aux_1": 6.0,
        "loss_ce_enc_0": 2.0, "loss_bbox_enc_0": 2.5}


@pytest.mark.parametrize("name", LW_RF_FAMILIES)
def test_family_loss_with_auxiliary_stages(name):
    a = make_adapter(name).train()
    pix, mask, targets = batch(name=name)
    out = a(pix, mask, targets=targets, criterion=FamilyLoss(SetCriterion(a.num_classes), aux_loss=True))
    assert set(out.loss_dict) == {"ce", "bbox", "giou", "enc_ce", "enc_bbox", "enc_giou"}
    assert torch.allclose(sum(out.loss_dict.values()), out.loss, rtol=1e-5)
    without = a(pix, mask, targets=targets, criterion=FamilyLoss(SetCriterion(a.num_classes), aux_loss=False))
    assert float(out.loss_dict["ce"].detach()) > float(without.loss_dict["ce"].detach())  # stage 0 added to the decoder terms
    assert a.model.config.auxiliary_loss is True  # restored: transformers' default, as built and saved


# ----------------------------------------------------------------------------------------------- sizes
def test_input_sides_of_transformers_default_configs():
    """What the defaults need: LW-DETR's 16 windows (4 per side) of 16 px patches -> multiples of 64; RF-DETR's 4 x 4
    windows of 14 px patches -> square multiples of 56 (448 works, 320 / 384 do not)."""
    from transformers import LwDetrConfig, RfDetrConfig

    lw = family_spec("lw_detr").sides(LwDetrConfig())
    assert lw == InputSides(64) and lw.accepts(640, 384) and not lw.accepts(640, 352)
    rf = family_spec("rf_detr").sides(RfDetrConfig())
    assert rf == InputSides(56, square=True) and rf.accepts(448, 448)
    assert not any(rf.accepts(s, s) for s in (320, 384)) and not rf.accepts(448, 504)


def test_from_scratch_models_take_the_pipelines_batches():
    """Our mapping gives LW-DETR 2 x 2 windows (multiples of 32, any aspect) and RF-DETR no windows (multiples of 16)."""
    for name, multiple in (("lw_detr", 32), ("rf_detr", 16)):
        sides = make_adapter(name).input_sides
        assert sides == InputSides(multiple) and sides.accepts(320, 224)


@pytest.mark.parametrize("name,hw,match", [("lw_detr", (96, 80), "multiples of 32"),
                                           ("rf_detr", (64, 64), "fewer than the 30 queries")])
def test_batches_that_do_not_fit_are_refused_in_one_line(name, hw, match):
    a = make_adapter(name).eval()
    with pytest.raises(InputSizeError, match=match) as e:
        a(torch.zeros(1, 3, *hw))
    assert len(str(e.value).splitlines()) == 1


def test_rf_detr_with_windows_needs_a_square_batch():
    a = make_adapter("rf_detr", hf_overrides={"group_detr": GROUPS, "backbone_config": {"num_windows": 2}}).eval()
    assert a.input_sides == InputSides(32, square=True)
    with pytest.raises(InputSizeError, match="square"):
        a(torch.zeros(1, 3, 128, 96))
    with torch.no_grad():
        assert torch.isfinite(a(torch.randn(1, 3, 128, 128)).logits).all()


def _identity_vit(family: str, windows: int) -> nn.Module:
    """A one-layer ViT backbone of ``family`` whose layer is the identity (zero residual branches) and without
    position embeddings: its feature map is the patch embedding, in place if the window partition is spatial."""
    from transformers import LwDetrViTConfig, RfDetrDinov2Config
    from transformers.models.lw_detr.modeling_lw_detr import LwDetrViTBackbone
    from transformers.models.rf_detr.modeling_rf_detr import RfDetrDinov2Backbone

    torch.manual_seed(0)
    if family == "lw_detr":
        vit = LwDetrViTBackbone(LwDetrViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                num_windows=windows ** 2, window_block_indices=[0], out_indices=[1]))
        branches = [p for n, p in vit.named_parameters() if "gamma" in n]
    else:
        vit = RfDetrDinov2Backbone(RfDetrDinov2Config(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                                      patch_size=16, num_windows=windows, out_indices=[1],
                                                      apply_layernorm=False))
        branches = [p for n, p in vit.named_parameters() if "lambda1" in n]
    with torch.no_grad():
        for p in branches:
            p.zero_()
        vit.embeddings.position_embeddings.zero_()
    return vit.eval()


@pytest.mark.parametrize("family,windows,hw,spatial", [
    ("lw_detr", 2, (64, 128), True), ("lw_detr", 2, (128, 64), True),
    ("rf_detr", 1, (64, 128), True), ("rf_detr", 2, (64, 64), True), ("rf_detr", 2, (64, 128), False)])
def test_window_partition_keeps_patches_in_place(family, windows, hw, spatial):
    """Why RF-DETR with windows needs square batches (InputSides.square): transformers' RF-DETR window partition
    moves patches on a rectangular grid (no error, scrambled maps); LW-DETR's keeps them at any aspect ratio."""
    vit = _identity_vit(family, windows)
    x = torch.zeros(1, 3, *hw)
    x[..., 16:32, 48:64] = 1.0  # one patch: row 1, column 3
    with torch.no_grad():
        response = (vit(x).feature_maps[0] - vit(torch.zeros_like(x)).feature_maps[0])[0].abs().sum(0)
    assert (torch.nonzero(response > 1e-6).tolist() == [[1, 3]]) == spatial


# ----------------------------------------------------------------------------------------------- config mapping
def test_config_mapping_derives_the_vit_and_the_levels():
    m = build_model(vit_cfg("lw_detr", d_model=64, encoder_layers=6, ffn_dim=256, num_feature_levels=3), ID2LABEL)
    c, vit = m.config, m.config.backbone_config
    assert (vit.hidden_size, vit.num_hidden_layers, vit.num_attention_heads, vit.mlp_ratio) == (64, 6, 4, 4)
    assert vit.out_indices == [2, 3, 5, 6] and vit.window_block_indices == [0, 3]  # global where outputs are taken
    assert (vit.patch_size, vit.num_windows) == (16, 4)
    assert list(c.projector_scale_factors) == [2.0, 1.0, 0.5] and c.num_feature_levels == 3
    assert (c.decoder_self_attention_heads, c.decoder_cross_attention_heads, c.decoder_ffn_dim) == (4, 4, 256)
    unset = ModelConfig(family="lw_detr", d_model=32, num_heads=4, ffn_dim=64, encoder_layers=1, num_queries=NQ)
    assert list(build_model(unset, ID2LABEL).config.projector_scale_factors) == [1.0]
    rf = build_model(vit_cfg("rf_detr", encoder_layers=4), ID2LABEL).config
    assert rf.num_feature_levels == 1 and rf.backbone_config.out_indices == [1, 2, 3, 4]
    assert (rf.backbone_config.patch_size, rf.backbone_config.num_windows) == (16, 1)


def test_backbone_overrides_merge_into_the_derived_vit():
    m = build_model(model_cfg("lw_detr", hf_overrides={"backbone_config": {"num_windows": 1}}), ID2LABEL)
    vit = m.config.backbone_config
    assert vit.num_windows == 1 and vit.hidden_size == 32 and vit.patch_size == 16


@pytest.mark.parametrize("name,update,match", [
    ("lw_detr", {"num_feature_levels": 4}, "model.num_feature_levels"),
    ("rf_detr", {"num_feature_levels": 2}, "model.num_feature_levels"),
    ("lw_detr", {"encoder_layers": 0}, "model.encoder_layers"),
])
def test_settings_the_families_cannot_honour_are_refused(name, update, match):
    with pytest.raises(ConfigError, match=match):
        build_model(vit_cfg(name, **update), ID2LABEL)


def test_a_pretrained_resnet_backbone_is_refused(tmp_path):
    from transformers import ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="model.backbone.pretrained: lw_detr has a ViT backbone"):
        build_model(vit_cfg("lw_detr", backbone=BackboneConfig(pretrained=str(tmp_path))), ID2LABEL)


@pytest.mark.parametrize("name", LW_RF_FAMILIES)
def test_freeze_stem_fixes_the_patch_embedding_and_all_the_whole_vit(name):
    stem = build_model(vit_cfg(name, backbone=BackboneConfig(freeze="stem")), ID2LABEL)
    vit = backbone_module(stem)
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith("embeddings.") for n in frozen)
    assert any("projection" in n for n in frozen) and any("position_embeddings" in n for n in frozen)
    whole = build_model(vit_cfg(name, backbone=BackboneConfig(freeze="all")), ID2LABEL)
    assert not any(p.requires_grad for p in backbone_module(whole).parameters())
    assert all(p.requires_grad for p in whole.model.backbone.projector.parameters())
    assert all(p.requires_grad for p in whole.model.decoder.parameters())


# ----------------------------------------------------------------------------------------------- DETRDistill
TERMS = {"logits_cls", "logits_bbox", "logits_giou", "feature", "query_prior_bbox", "query_prior_giou"}
# (teacher, student, teacher fields): the 3-level LW-DETR (strides 8 / 16 / 32) shares RF-DETR's stride-16 level
PAIRS = [("lw_detr", "lw_detr", {}), ("rf_detr", "rf_detr", {}), ("lw_detr", "deformable_detr", {}),
         ("deformable_detr", "lw_detr", {}), ("rf_detr", "rt_detr", {}), ("rt_detr", "rf_detr", {}),
         ("lw_detr", "rf_detr", {"num_feature_levels": 3})]


@pytest.mark.parametrize("recipe", ["family", "set"])
@pytest.mark.parametrize("t_name,s_name,t_fields", PAIRS, ids=[f"{t}-to-{s}" for t, s, _ in PAIRS])
def test_detrdistill_step(t_name, s_name, t_fields, recipe):
    """Every DETRDistill term (logits, feature, query prior) with LW-DETR / RF-DETR as teacher and as student: all
    logged and finite; gradients reach the student (its decoder through the teacher's query group too), never the
    teacher."""
    teacher = make_adapter(t_name, d_model=64, seed=1, **t_fields)
    student = make_adapter(s_name, d_model=32, seed=2).train()
    dist = Distiller(teacher, student, DistillConfig())
    dist.train()
    criterion = student_criterion(LossConfig(recipe=recipe), student)
    pix, mask, targets = batch(name="rf_detr")  # 128 x 96: enough tokens for every family's 30 queries
    out = dist(pix, mask, targets, criterion)
    # the query-prior group: RT-DETR's own varifocal loss under its recipe (group_loss=family, the default); the set
    # criterion otherwise, LW-DETR / RF-DETR students included (no group loss of their family)
    group_cls = "query_prior_vfl" if (s_name, recipe) == ("rt_detr", "family") else "query_prior_cls"
    assert TERMS | {group_cls} <= set(out.loss_dict)
    assert all(torch.isfinite(v) for v in out.loss_dict.values())
    own = set(out.loss_dict) - TERMS - {group_cls}  # the student's own loss
    if recipe == "set":
        assert own == {"cls", "bbox", "giou"}
    elif s_name in LW_RF_FAMILIES:  # transformers' group loss, decoder and two-stage proposals
        assert own == {"ce", "bbox", "giou", "enc_ce", "enc_bbox", "enc_giou"}
    else:
        assert own
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    named = dict(student.named_parameters())
    for part in ("model.model.decoder.", "model.model.backbone."):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in named.items() if n.startswith(part)), part
    # the teacher's queries reach the student's decoder: the projection (64 -> 32 wide content) feeds nothing else
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dist.query_projection.parameters())


def test_feature_term_refuses_levels_without_a_common_size():
    """The 2-level LW-DETR (strides 8 / 32) and RF-DETR (stride 16) share no feature level: the feature term is
    refused in one line when the distiller is built; the other terms still work."""
    teacher, student = make_adapter("lw_detr", d_model=64, seed=1), make_adapter("rf_detr", seed=2)
    with pytest.raises(ValueError, match="feature distillation cannot pair them") as e:
        Distiller(teacher, student, DistillConfig())
    assert len(str(e.value).splitlines()) == 1
    dist = Distiller(teacher, student, DistillConfig(feature={"enabled": False})).train()
    pix, mask, targets = batch(name="rf_detr")
    out = dist(pix, mask, targets, SetCriterion(student.num_classes))
    assert TERMS - {"feature"} <= set(out.loss_dict) and "feature" not in out.loss_dict


def test_teacher_queries_are_the_first_group_of_an_eval_forward():
    """The query prior decodes the teacher's own decoder inputs: num_queries of them per image, the content table
    and the per-image two-stage references."""
    teacher = make_adapter("lw_detr", d_model=64, seed=1)
    pix, mask, _ = batch(name="lw_detr")
    q = Distiller(teacher, make_adapter("lw_detr"), DistillConfig()).teacher_forward(pix, mask).queries
    assert isinstance(q, QueryGroup) and q.content.shape == (2, NQ, 64) and q.reference.shape == (2, NQ, 4)
    torch.testing.assert_close(q.content[0], teacher.model.model.query_feat.weight[:NQ])
    assert not torch.allclose(q.reference[0], q.reference[1])  # per image


@pytest.mark.parametrize("name", ["lw_detr", "rf_detr"])
def test_the_plain_models_eval_loss_is_over_its_one_group(name):
    """In eval mode the model decodes one group of queries, but transformers' loss splits them into group_detr
    groups by its own training flag: under one_group_in_eval the eval loss is the one-group loss (what
    DETRDistiller.student_forward and DistillationTrainer's evaluation report)."""
    from detrdistill.models.adapters.lw_detr_base import one_group_in_eval

    a = make_adapter(name).eval()
    assert a.model.config.group_detr > 1
    pix, mask, targets = batch(name=name)
    with torch.no_grad():
        split = a.model(pix, pixel_mask=mask, labels=targets).loss
        with one_group_in_eval(a.model):
            ours = a.model(pix, pixel_mask=mask, labels=targets).loss
        groups = a.model.config.group_detr
        a.model.config.group_detr = 1
        want = a.model(pix, pixel_mask=mask, labels=targets).loss
        a.model.config.group_detr = groups
    assert torch.equal(ours, want) and not torch.allclose(split, want)
    a.train()
    with one_group_in_eval(a.model):  # train mode: nothing changes
        assert a.model.config.group_detr == groups
