"""Family-specific checks of the DAB-DETR and RT-DETR / RT-DETRv2 adapters, beyond the contract tests.

Tiny random models (d_model 32, 2 decoder layers, 30 queries, ResNet widths 16-128) on a batch of two images of
different sizes, padded to one canvas (the second image has padding on the right and at the bottom).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detrdistill.config import BackboneConfig, ModelConfig
from detrdistill.models.families import get_adapter
from detrdistill.models.adapters.base import padded_frame_scale
from detrdistill.models.adapters.dab_detr import DabDetrAdapter
from detrdistill.models.adapters.rt_detr import RTDetrAdapter
from detrdistill.models.build import build_model
from detrdistill.models.outputs import QueryGroup
from detrdistill.ops.criterion import SetCriterion
from tests.test_adapters import real_frame

EXTRA_FAMILIES = ("dab_detr", "rt_detr", "rt_detr_v2")
RT_FAMILIES = ("rt_detr", "rt_detr_v2")
NUM_CLASSES, NUM_QUERIES, D, LAYERS = 5, 30, 32, 2
ID2LABEL = {i: f"class{i}" for i in range(NUM_CLASSES)}
CANVAS = (96, 64)          # padded batch H, W (RT-DETR needs multiples of 32)
SECOND_IMAGE = (64, 40)    # real H, W of the second image
ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_thread")


def model_config(family: str, **overrides) -> ModelConfig:
    hf = {"num_denoising": 10} if family in RT_FAMILIES else {}
    hf.update(overrides)
    return ModelConfig(
        family=family, num_queries=NUM_QUERIES, d_model=D, encoder_layers=1, decoder_layers=LAYERS, ffn_dim=64,
        num_heads=4, backbone=BackboneConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
        hf_overrides=hf)


def make_adapter(family: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    model = build_model(model_config(family, **overrides), ID2LABEL)
    if family in RT_FAMILIES:
        _calibrate_batch_norms(model)
    cls = DabDetrAdapter if family == "dab_detr" else RTDetrAdapter
    return cls(model)


def _calibrate_batch_norms(model) -> None:
    """transformers initialises RT-DETR's BatchNorm2d weights ~ N(0, 0.01) and an untrained model's eval-mode
    running statistics are the defaults, so its eval-mode features are ~1e-8 and every image yields nearly the
    same predictions. Unit BN weights and statistics from two random batches give a non-degenerate model."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        nn.init.ones_(bn.weight)
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    was_training = model.training
    model.train()
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn(2, 3, *CANVAS, generator=g))
    model.train(was_training)


_SHARED: dict[str, object] = {}


def shared_adapter(family: str):
    """One adapter per family for the whole module (tests set train / eval mode themselves)."""
    if family not in _SHARED:
        _SHARED[family] = make_adapter(family)
    return _SHARED[family]


@pytest.fixture(params=EXTRA_FAMILIES)
def adapter(request):
    return shared_adapter(request.param)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(2, 3, *CANVAS, generator=g)
    pixel_mask = torch.zeros(2, *CANVAS, dtype=torch.long)
    pixel_mask[0] = 1
    pixel_mask[1, :SECOND_IMAGE[0], :SECOND_IMAGE[1]] = 1
    pixel_values[1] *= pixel_mask[1]
    targets = []
    for n in (3, 1):
        cxcy = torch.rand(n, 2, generator=g) * 0.5 + 0.25
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.1
        targets.append({"class_labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([cxcy, wh], -1)})
    return pixel_values, pixel_mask, targets


def assert_close(a, b, atol=ATOL):
    assert a.shape == b.shape, (a.shape, b.shape)
    diff = (a - b).abs().max().item() if a.numel() else 0.0
    assert diff <= atol, f"max |diff| {diff:.3e} > {atol}"


def random_group(adapter, n: int, batch: int = 1, requires_grad: bool = False, seed: int = 1) -> QueryGroup:
    """A group in the adapter's query form: references strictly inside (0, 1), content ~ N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    reference = torch.cat([torch.rand(batch, n, 2, generator=g) * 0.6 + 0.2,
                           torch.rand(batch, n, 2, generator=g) * 0.3 + 0.05], -1)
    content = torch.randn(batch, n, adapter.d_model, generator=g) if "content" in adapter.query_form else None
    if requires_grad:
        reference.requires_grad_(True)
        if content is not None:
            content.requires_grad_(True)
    return QueryGroup(content=content, reference=reference)


# ----------------------------------------------------------------------------------------------- forward layout
def test_output_shapes(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
    L, B, N, C = adapter.num_stages, 2, adapter.num_queries, adapter.num_classes
    assert (L, N, C, adapter.d_model) == (LAYERS, NUM_QUERIES, NUM_CLASSES, D)
    assert out.logits.shape == (L, B, N, C) and out.class_activation == "sigmoid"
    # fractions of each image's real pixels: inside the padded input, so beyond 1 only where the image is padded
    scale = 1 if adapter.family == "dab_detr" else padded_frame_scale(pixel_mask)[:, None]
    assert out.boxes.shape == (L, B, N, 4) and bool(((out.boxes >= 0) & (out.boxes * scale <= 1)).all())
    assert out.embeddings.shape == (L, B, N, D)
    assert out.loss is None and out.assignments is None

    M = adapter.num_feature_levels
    assert M == (1 if adapter.family == "dab_detr" else 3)
    assert len(out.encoder_inputs) == len(out.encoder_outputs) == len(out.feature_masks) == M
    for m, (x, y, mask) in enumerate(zip(out.encoder_inputs, out.encoder_outputs, out.feature_masks)):
        assert x.shape[:2] == y.shape[:2] == (B, adapter.feature_channels[m])
        assert x.shape[2:] == y.shape[2:] == mask.shape[1:] and mask.shape[0] == B
        assert mask.dtype == torch.bool
        assert bool(mask[0].all()), "the first image has no padding"
        assert not bool(mask[1].all()) and bool(mask[1, 0, 0]), "the second image is padded right / bottom"
    # coarsest level last: stride 32 (C5), rounded up
    assert tuple(out.encoder_outputs[-1].shape[2:]) == (-(-CANVAS[0] // 32), -(-CANVAS[1] // 32))

    q = out.queries
    if adapter.family == "dab_detr":
        assert q.content is None and q.position is None and q.reference.shape == (1, N, 4)
    else:
        assert q.content.shape == (B, N, D) and q.position is None and q.reference.shape == (B, N, 4)
    assert bool(((q.reference >= 0) & (q.reference * scale <= 1)).all())
    assert "decoder_kwargs" in out.state


def test_final_stage_equals_model_output(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        ref = adapter.model(pixel_values, pixel_mask=pixel_mask)
    assert_close(out.logits[-1], ref.logits, atol=1e-6)
    assert_close(out.boxes[-1], real_frame(adapter.family, ref.pred_boxes, pixel_mask), atol=1e-6)


def test_dab_detr_every_stage_equals_transformers_auxiliary_outputs(batch):
    """The box maths the adapter repeats (bbox_predictor + inverse_sigmoid(anchor)) matches transformers' own aux
    outputs for every stage (they need labels and auxiliary_loss=True; eval mode keeps the forward unchanged)."""
    pixel_values, pixel_mask, targets = batch
    adapter = shared_adapter("dab_detr").eval()
    adapter.model.config.auxiliary_loss = True
    try:
        with torch.no_grad():
            out = adapter(pixel_values, pixel_mask)
            ref = adapter.model(pixel_values, pixel_mask=pixel_mask, labels=targets)
    finally:
        adapter.model.config.auxiliary_loss = False
    aux = ref.auxiliary_outputs
    assert len(aux) == LAYERS - 1
    assert_close(out.logits, torch.stack([a["logits"] for a in aux] + [ref.logits]), atol=1e-6)
    assert_close(out.boxes, torch.stack([a["pred_boxes"] for a in aux] + [ref.pred_boxes]), atol=1e-6)


def test_rt_detr_every_stage_equals_transformers_intermediate_outputs(batch):
    pixel_values, pixel_mask, _ = batch
    adapter = shared_adapter("rt_detr_v2").eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        ref = adapter.model(pixel_values, pixel_mask=pixel_mask)
    assert_close(out.logits, ref.intermediate_logits.transpose(0, 1), atol=0)
    assert_close(out.boxes, real_frame(adapter.family, ref.intermediate_reference_points.transpose(0, 1),
                                       pixel_mask), atol=1e-6)
    assert_close(out.embeddings, ref.intermediate_hidden_states.transpose(0, 1), atol=0)
    assert_close(out.queries.reference, real_frame(adapter.family, ref.init_reference_points.sigmoid(), pixel_mask),
                 atol=1e-6)


# ----------------------------------------------------------------------------------------------- extra groups
def test_own_queries_reproduce_every_stage(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        group = adapter.decode_group(out, out.queries)
    assert_close(group.logits, out.logits)
    assert_close(group.boxes, out.boxes)
    assert_close(group.embeddings, out.embeddings)


def test_dab_detr_query_table_is_the_live_anchor_table():
    adapter = shared_adapter("dab_detr")
    table = adapter.query_table()
    weight = adapter.model.model.query_refpoint_embeddings.weight
    assert table.reference.shape == (1, NUM_QUERIES, 4) and table.content is None
    assert_close(table.reference[0], weight.sigmoid(), atol=0)
    table.reference.sum().backward()
    assert weight.grad is not None and bool((weight.grad != 0).any())


def test_group_of_seven_on_a_thirty_query_model(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        group = random_group(adapter, 7, batch=1)
        res = adapter.decode_group(out, group)
        expanded = QueryGroup(content=None if group.content is None else group.content.expand(2, -1, -1),
                              reference=group.reference.expand(2, -1, -1))
        res_b = adapter.decode_group(out, expanded)
    L = adapter.num_stages
    assert res.logits.shape == (L, 2, 7, NUM_CLASSES)
    assert res.boxes.shape == (L, 2, 7, 4) and bool(((res.boxes >= 0) & (res.boxes <= 1)).all())
    assert res.embeddings.shape == (L, 2, 7, D)
    # batch dim 1 broadcasts: identical to an explicitly expanded group
    assert_close(res.logits, res_b.logits, atol=0)
    assert_close(res.boxes, res_b.boxes, atol=0)
    # each image is decoded over its own memory
    assert not torch.allclose(res.logits[:, 0], res.logits[:, 1])


def test_group_is_a_separate_decoder_call(adapter, batch):
    """Decoding a group (here: the first 7 own queries) is deterministic and leaves the normal outputs unchanged."""
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        own = out.queries
        first = QueryGroup(content=None if own.content is None else own.content[:, :7],
                           reference=own.reference[:, :7])
        alone = adapter.decode_group(out, first)
        again = adapter.decode_group(out, first)
        out_again = adapter(pixel_values, pixel_mask)
    assert alone.logits.shape[2] == 7
    assert_close(again.logits, alone.logits, atol=0)
    assert_close(out_again.logits, out.logits, atol=0)


def test_gradients_reach_decoder_heads_memory_and_group(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.train()
    adapter.zero_grad(set_to_none=True)
    out = adapter(pixel_values, pixel_mask)
    group = random_group(adapter, 7, batch=1, requires_grad=True)
    res = adapter.decode_group(out, group)
    (res.logits.sigmoid().sum() + res.boxes.sum() + res.embeddings.pow(2).mean()).backward()

    model = adapter.model
    if adapter.family == "dab_detr":
        decoder, heads, encoder = model.model.decoder, [model.class_embed, model.bbox_predictor], model.model.encoder
    else:
        decoder = model.model.decoder
        heads, encoder = [decoder.class_embed, decoder.bbox_embed], model.model.encoder

    def has_grad(module, name):
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        assert grads, f"no gradient reached {name}"
        assert all(bool(torch.isfinite(g).all()) for g in grads), f"non-finite gradient in {name}"
        assert any(bool((g != 0).any()) for g in grads), f"all-zero gradient in {name}"

    for i, layer in enumerate(decoder.layers):
        has_grad(layer, f"decoder.layers[{i}]")
    for i, head in enumerate(heads):
        has_grad(head, f"head {i}")
    has_grad(encoder, "encoder (through the memory)")
    for name in ("content", "reference"):
        t = getattr(group, name)
        if t is not None:
            assert t.grad is not None and bool(torch.isfinite(t.grad).all()) and bool((t.grad != 0).any()), name
    adapter.zero_grad(set_to_none=True)


def test_saturated_references_give_finite_outputs_and_gradients(adapter, batch):
    """A reference of exactly 1 (RT-DETR's top-k can pick an invalid anchor, whose logit is finfo.max) must not
    turn into nan outputs or gradients when it goes through the adapter's logit. Without padding: on a padded image
    a reference of 1 lies inside RT-DETR's padded input frame, not on its border."""
    pixel_values, _, _ = batch
    pixel_mask = torch.ones(pixel_values.shape[0], *pixel_values.shape[2:], dtype=torch.long)
    adapter.eval()
    out = adapter(pixel_values, pixel_mask)
    group = random_group(adapter, 5, batch=1)
    reference = group.reference.detach().clone()
    reference[0, 0, 0] = 1.0    # centre on the right border
    reference[0, 1, 2:] = 1.0   # full-image box
    reference.requires_grad_(True)
    res = adapter.decode_group(out, QueryGroup(content=group.content, reference=reference))
    assert bool(torch.isfinite(res.logits).all()) and bool(torch.isfinite(res.boxes).all())
    res.boxes.sum().backward()
    assert bool(torch.isfinite(reference.grad).all())
    assert float(reference.grad[0, 0, 0]) == 0.0
    adapter.zero_grad(set_to_none=True)


def test_group_with_the_wrong_form_is_rejected(adapter, batch):
    pixel_values, pixel_mask, _ = batch
    adapter.eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        with pytest.raises(ValueError, match="reference"):
            adapter.decode_group(out, QueryGroup(content=torch.zeros(1, 3, D)))
        with pytest.raises(ValueError, match="width"):
            adapter.decode_group(out, QueryGroup(content=torch.zeros(1, 3, D + 1),
                                                 reference=torch.full((1, 3, 4), 0.5)))
        if adapter.family != "dab_detr":
            with pytest.raises(ValueError, match="content"):
                adapter.decode_group(out, QueryGroup(reference=torch.full((1, 3, 4), 0.5)))
        with pytest.raises(ValueError, match="batch"):
            adapter.decode_group(out, random_group(adapter, 3, batch=3))


def test_dab_detr_optional_content_replaces_the_zero_start(batch):
    pixel_values, pixel_mask, _ = batch
    adapter = shared_adapter("dab_detr").eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        table = adapter.query_table()
        zeros = adapter.decode_group(out, QueryGroup(content=torch.zeros(1, NUM_QUERIES, D),
                                                     reference=table.reference))
        other = adapter.decode_group(out, QueryGroup(content=torch.randn(1, NUM_QUERIES, D),
                                                     reference=table.reference))
    assert_close(zeros.logits, out.logits)
    assert not torch.allclose(other.logits, out.logits)


# ----------------------------------------------------------------------------------------------- RT-DETR specifics
@pytest.mark.parametrize("family", RT_FAMILIES)
def test_rt_detr_train_mode_has_no_denoising_queries(family, batch):
    pixel_values, pixel_mask, targets = batch
    adapter = shared_adapter(family).train()
    # the bare transformers model adds denoising queries in train mode when it gets labels ...
    with torch.no_grad():
        hf = adapter.model(pixel_values, pixel_mask=pixel_mask, labels=targets)
    assert hf.logits.shape[1] > NUM_QUERIES
    # ... the adapter never passes labels, with or without targets / criterion
    criterion = SetCriterion(NUM_CLASSES)
    for kwargs in ({}, {"targets": targets}, {"targets": targets, "criterion": criterion}):
        out = adapter(pixel_values, pixel_mask, **kwargs)
        assert out.logits.shape == (LAYERS, 2, NUM_QUERIES, NUM_CLASSES)
        assert out.boxes.shape[2] == out.embeddings.shape[2] == NUM_QUERIES
        assert out.queries.content.shape[1] == out.queries.reference.shape[1] == NUM_QUERIES
        assert out.state["decoder_kwargs"]["inputs_embeds"].shape[1] == NUM_QUERIES
        assert out.state["decoder_kwargs"].get("encoder_attention_mask") is None
    assert out.loss is not None and out.loss.requires_grad
    assert out.assignments.shape == (LAYERS, 2, NUM_QUERIES)
    assert set(out.loss_dict) == {"cls", "bbox", "giou"}
    adapter.eval()


@pytest.mark.parametrize("family", RT_FAMILIES)
def test_rt_detr_queries_are_dynamic(family, batch):
    pixel_values, pixel_mask, _ = batch
    adapter = shared_adapter(family).eval()
    assert adapter.family == family
    assert adapter.query_form == {"content": D, "reference": 4}
    with pytest.raises(NotImplementedError, match="DetectorOutput.queries"):
        adapter.query_table()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        flipped = adapter(pixel_values.flip(0), pixel_mask.flip(0))
    q = out.queries
    assert not torch.allclose(q.content[0], q.content[1]), "each image selects its own top-k tokens"
    assert not q.content.requires_grad and not q.reference.requires_grad  # the model detaches them
    assert_close(flipped.queries.content, q.content.flip(0), atol=1e-6)
    # another image's queries decode fine over this image's memory
    with torch.no_grad():
        swapped = adapter.decode_group(out, QueryGroup(content=q.content.flip(0), reference=q.reference.flip(0)))
    assert swapped.logits.shape == out.logits.shape


def test_rt_detr_learned_initial_query_is_rejected():
    """transformers 5.24's RTDetrModel.forward calls ``.tile`` on the ``weight_embedding`` nn.Embedding when
    ``learn_initial_query=True`` (AttributeError); the adapter refuses such a model up front."""
    torch.manual_seed(0)
    model = build_model(model_config("rt_detr", learn_initial_query=True), ID2LABEL)
    with pytest.raises(ValueError, match="learn_initial_query"):
        RTDetrAdapter(model)


@pytest.mark.parametrize("family", RT_FAMILIES)
def test_rt_detr_features_are_hybrid_encoder_input_and_output(family, batch):
    pixel_values, pixel_mask, _ = batch
    adapter = shared_adapter(family).eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        ref = adapter.model(pixel_values, pixel_mask=pixel_mask)
        inner = adapter.model.model
        feats = inner.backbone(pixel_values, pixel_mask)
        proj = [inner.encoder_input_proj[i](f) for i, (f, _) in enumerate(feats)]
    for mine, theirs in zip(out.encoder_inputs, proj):
        assert_close(mine, theirs, atol=0)
    for mine, theirs in zip(out.encoder_outputs, ref.encoder_last_hidden_state):
        assert_close(mine, theirs, atol=0)
    for mask, (_, theirs) in zip(out.feature_masks, feats):
        assert torch.equal(mask, theirs)


def test_rt_detr_feature_channels_follow_encoder_hidden_dim(batch):
    """encoder_hidden_dim != d_model: both feature sources are encoder_hidden_dim wide (feature_channels)."""
    pixel_values, pixel_mask, _ = batch
    adapter = make_adapter("rt_detr", encoder_hidden_dim=48, decoder_in_channels=[48, 48, 48]).eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
    assert adapter.feature_channels == [48, 48, 48]
    assert [x.shape[1] for x in out.encoder_inputs] == [y.shape[1] for y in out.encoder_outputs] == [48] * 3
    assert out.embeddings.shape[-1] == D


def test_dab_detr_features(batch):
    pixel_values, pixel_mask, _ = batch
    adapter = shared_adapter("dab_detr").eval()
    with torch.no_grad():
        out = adapter(pixel_values, pixel_mask)
        inner = adapter.model.model
        (feature, mask), = inner.backbone.conv_encoder(pixel_values, pixel_mask)
        projected = inner.input_projection(feature)
    assert_close(out.encoder_inputs[0], projected, atol=0)
    assert torch.equal(out.feature_masks[0], mask)
    memory = out.state["decoder_kwargs"]["encoder_hidden_states"]
    assert_close(out.encoder_outputs[0].flatten(2).transpose(1, 2), memory, atol=0)


# ----------------------------------------------------------------------------------------------- wiring
@pytest.mark.parametrize("family", EXTRA_FAMILIES)
def test_registry_dispatches_to_these_adapters(family):
    torch.manual_seed(0)
    model = build_model(model_config(family), ID2LABEL)
    adapter = get_adapter(model)
    assert type(adapter) is (DabDetrAdapter if family == "dab_detr" else RTDetrAdapter)
    assert adapter.family == family


def test_wrong_model_is_rejected():
    torch.manual_seed(0)
    rt = build_model(model_config("rt_detr"), ID2LABEL)
    with pytest.raises(ValueError, match="dab"):
        DabDetrAdapter(rt)
    with pytest.raises(ValueError, match="rt_detr"):
        RTDetrAdapter(build_model(model_config("dab_detr"), ID2LABEL))
