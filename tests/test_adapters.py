"""Contract tests of the model layer: every registered family, tiny random models, CPU.

Each family case builds transformers' own detector through :func:`build_model` and checks the adapter contract:
shapes of every DetectorOutput field (padded batch of two image sizes), per-stage outputs vs the model's own final
outputs, the extra query group (own queries reproduce the normal predictions; 7 of 30 queries; broadcasting;
gradients; a width-64 teacher feeding a width-32 student through QueryProjection), the criterion's assignment vs
transformers' Hungarian matcher. Building and loading: tests/test_adapter_build.py.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from detrdistill.config import BackboneConfig, ModelConfig  # noqa: E402
from detrdistill.models import (QueryGroup, QueryProjection, build_model, build_query_projection,  # noqa: E402
                                count_parameters, get_adapter)
from detrdistill.models.adapters.base import expand_group, padded_frame_scale  # noqa: E402
from detrdistill.models.families import adapter_class, family_names, family_spec  # noqa: E402
from detrdistill.models.family_index import DECLARED_FAMILIES  # noqa: E402
from detrdistill.models.outputs import DetectorOutput, GroupOutput  # noqa: E402
from detrdistill.models.query_projection import IncompatibleQueriesError  # noqa: E402

NUM_CLASSES = 5
ID2LABEL = {i: f"class{i}" for i in range(NUM_CLASSES)}
NQ = 30
STAGES = 2
H, W = 96, 64            # padded batch size (multiples of 32: RT-DETR's FPN needs it)
SMALL = (64, 48)         # real size of image 1 (bottom / right padding)
# where a case differs: its padded batch (H, W), the stride of a single-level family's one level (32 = C5 otherwise)
# and where ``backbone.freeze: stem`` applies (a ResNet's ``embedder`` otherwise)
CANVAS = {"rf_detr": (128, 96)}  # one stride-16 level: 8 x 6 tokens for the 30 top-k queries (96 x 64 gives 24)
STRIDE = {"rf_detr": 16}
STEM = {"lw_detr": "embeddings.", "rf_detr": "embeddings."}  # ViT backbones: patch / position embeddings

# name -> (family, extra ModelConfig fields)
CASES = {
    "detr": ("detr", {}),
    "conditional_detr": ("conditional_detr", {}),
    "deformable_detr": ("deformable_detr", {"num_feature_levels": 4}),
    "deformable_detr_refine": ("deformable_detr", {"num_feature_levels": 2, "with_box_refine": True}),
    "deformable_detr_two_stage": ("deformable_detr", {"num_feature_levels": 3, "with_box_refine": True,
                                                      "two_stage": True}),
    "dab_detr": ("dab_detr", {}),
    "rt_detr": ("rt_detr", {}),
    "rt_detr_v2": ("rt_detr_v2", {}),
    "d_fine": ("d_fine", {}),
    "deimv2": ("deimv2", {}),
    "adamixer": ("adamixer", {"hf_overrides": {"in_points": 4, "out_points": 8, "n_groups": 4}}),
    "lw_detr": ("lw_detr", {"num_feature_levels": 2, "hf_overrides": {"group_detr": 3}}),
    "rf_detr": ("rf_detr", {"hf_overrides": {"group_detr": 3}}),
}

# cases whose transformers model reports no per-stage auxiliary outputs to compare with: D-FINE / DEIMv2 give only the
# encoder's top-k proposals in eval mode, and in train mode the pre-bbox head followed by layers 0..L-3 (shifted
# by one); tests/test_d_fine.py checks their stages against the decoder's own per-layer outputs instead
NO_AUX_STAGES = {"d_fine", "deimv2"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _registered(name: str) -> bool:
    return adapter_class(CASES[name][0]) is not None


def case_params():
    return [pytest.param(n, marks=pytest.mark.skipif(not _registered(n), reason=f"no adapter for {CASES[n][0]}"))
            for n in CASES]


def model_cfg(name: str, d_model: int = 32, **update) -> ModelConfig:
    family, extra = CASES[name]
    return ModelConfig(family=family, num_queries=NQ, d_model=d_model, encoder_layers=1, decoder_layers=STAGES,
                       ffn_dim=64, num_heads=4, dropout=0.0,
                       backbone=BackboneConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1]),
                       **{**extra, **update})


def make_adapter(name: str, d_model: int = 32, seed: int = 0, **update):
    torch.manual_seed(seed)
    model = build_model(model_cfg(name, d_model, **update), ID2LABEL)
    _break_symmetry(model)
    return get_adapter(model)


@torch.no_grad()
def _break_symmetry(model: nn.Module) -> None:
    """Add noise to the constant decoder / head parameters (LayerNorm 1/0, zero-initialised heads and biases).

    At init a LayerNorm after a LayerNorm is the identity and zero box heads hide the reference points; trained
    models have neither, and the tests must see a missing norm or a wrong reference. (Encoder and backbone are
    left alone: bias noise through RT-DETR's un-normalised CSP blocks drowns the image signal.)
    """
    for n, p in model.named_parameters():
        in_scope = n.startswith("model.decoder.") or not n.startswith("model.")
        if in_scope and p.numel() > 1 and float(p.std()) == 0.0:
            p.add_(torch.randn_like(p) * 0.2)


def canvas(name: str | None = None) -> tuple[int, int]:
    """The padded batch size of case ``name`` (H, W unless it needs another)."""
    return CANVAS.get(name, (H, W))


def batch(seed: int = 0, name: str | None = None):
    """Two images padded to ``canvas(name)``: image 0 fills it, image 1 is SMALL (padding right and bottom)."""
    g = torch.Generator().manual_seed(seed)
    h, w = canvas(name)
    pix = torch.randn(2, 3, h, w, generator=g)
    mask = torch.ones(2, h, w, dtype=torch.long)
    mask[1, SMALL[0]:] = 0
    mask[1, :, SMALL[1]:] = 0
    pix = pix * mask[:, None]
    targets = []
    for n in (3, 5):
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        targets.append({"class_labels": torch.randint(0, NUM_CLASSES, (n,), generator=g),
                        "boxes": torch.cat([cxcy, wh], 1)})
    return pix, mask, targets


def reads_mask(name: str) -> bool:
    """Whether the family reads the pixel mask; one that does not (RT-DETR, D-FINE, DEIMv2) predicts boxes as
    fractions of the padded input, which its adapter reports as fractions of each image's real pixels."""
    return "pixel_mask" in family_spec(CASES[name][0] if name in CASES else name).capabilities


def real_frame(name: str, boxes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """What the adapter reports for the model's own boxes ``[..., B, N, 4]`` on a batch with ``mask``: the same
    boxes for a family that reads the mask, else divided by each image's real share of the input."""
    scale = padded_frame_scale(mask)
    if reads_mask(name) or scale is None:
        return boxes
    return boxes / scale[:, None]


def model_frame_targets(name: str, targets: list[dict], mask: torch.Tensor) -> list[dict]:
    """The targets as the model itself must see them (boxes as fractions of the padded input for a family that
    ignores the mask), i.e. what transformers' own loss is given to match the adapter's."""
    scale = padded_frame_scale(mask)
    if reads_mask(name) or scale is None:
        return targets
    return [{**t, "boxes": t["boxes"] * s} for t, s in zip(targets, scale)]


def own_queries(adapter, out: DetectorOutput) -> QueryGroup:
    """The queries the decoder started from: the learned table when there is one, else the per-image inputs."""
    return adapter.query_table() if adapter.has_query_table else out.queries


def slice_group(group: QueryGroup, n: int, batch: slice = slice(None)) -> QueryGroup:
    f = lambda t: None if t is None else t[batch, :n]  # noqa: E731
    return QueryGroup(content=f(group.content), position=f(group.position), reference=f(group.reference))


def nonzero_grad(params) -> bool:
    return any(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in params)


# ----------------------------------------------------------------------------------------------- registry
def test_every_family_has_an_adapter():
    assert set(family_names()) == set(DECLARED_FAMILIES), "an adapter module is missing or does not import"
    assert all(adapter_class(name) is family_spec(name).adapter for name in family_names())


# ----------------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("name", case_params())
def test_output_shapes(name):
    a = make_adapter(name).eval()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
    C = NUM_CLASSES + (1 if a.class_activation == "softmax" else 0)
    assert a.num_classes == NUM_CLASSES and a.num_queries == NQ and a.num_stages == STAGES and a.d_model == 32
    assert out.class_activation == a.class_activation
    assert out.logits.shape == (STAGES, 2, NQ, C)
    assert out.boxes.shape == (STAGES, 2, NQ, 4)
    assert out.embeddings.shape == (STAGES, 2, NQ, 32)
    # fractions of each image's real pixels; beyond 1 only in the padding, for a family that never sees it
    inside = out.boxes if reads_mask(name) else out.boxes * padded_frame_scale(mask)[:, None]
    assert torch.isfinite(out.logits).all() and ((out.boxes >= 0) & (inside <= 1)).all()
    M = a.num_feature_levels
    assert len(out.encoder_inputs) == len(out.encoder_outputs) == len(out.feature_masks) == M == len(a.feature_channels)
    prev = None
    for m in range(M):
        fi, fo, fm = out.encoder_inputs[m], out.encoder_outputs[m], out.feature_masks[m]
        assert fi.shape[:2] == fo.shape[:2] == (2, a.feature_channels[m])
        assert fi.shape[2:] == fo.shape[2:] == fm.shape[1:]
        assert fm.dtype == torch.bool and fm.shape[0] == 2
        assert fm[0].all(), "image 0 has no padding"
        expected = nn.functional.interpolate(mask[None].float(), size=fm.shape[1:]).bool()[0]  # nearest
        assert torch.equal(fm, expected), f"level {m}: feature mask is not the downsampled pixel mask"
        if prev is not None:
            assert fi.shape[2] <= prev, "levels go from fine to coarse"
        prev = fi.shape[2]
    assert not out.feature_masks[0][1].all(), "image 1's padding is visible at the finest level"
    # the finest level's stride matches the image (stride 32 for single-level families unless STRIDE says)
    if M == 1:
        stride, (h, w) = STRIDE.get(name, 32), canvas(name)
        assert out.encoder_inputs[0].shape[2:] == (h // stride, w // stride)
    q = out.queries
    assert isinstance(q, QueryGroup) and q.num_queries == NQ
    for t in (q.content, q.position, q.reference):
        assert t is None or t.shape[0] in (1, 2)
    assert set(a.query_form) <= {"content", "position", "reference"}
    for f, width in a.query_form.items():
        assert getattr(q, f) is not None and getattr(q, f).shape[-1] == width


def test_padded_frame_scale_is_each_images_real_share_of_the_input():
    pix, mask, _ = batch()
    scale = padded_frame_scale(mask)
    w_share, h_share = SMALL[1] / W, SMALL[0] / H
    torch.testing.assert_close(scale, torch.tensor([[1.0, 1.0, 1.0, 1.0], [w_share, h_share, w_share, h_share]]))
    whole = torch.tensor([0.5, 0.5, 1.0, 1.0])  # image 1's whole real area, as a fraction of the padded input:
    cx, cy, bw, bh = (whole * scale[1]).tolist()
    assert ((cx + bw / 2) * W, (cy + bh / 2) * H) == pytest.approx((SMALL[1], SMALL[0]))  # where its pixels end
    assert padded_frame_scale(torch.ones_like(mask)) is None  # nothing padded: nothing to convert


# ----------------------------------------------------------------------------------------------- final stage
@pytest.mark.parametrize("name", case_params())
def test_last_stage_equals_model_outputs(name):
    a = make_adapter(name).eval()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
        hf = a.model(pixel_values=pix, pixel_mask=mask)
    torch.testing.assert_close(out.logits[-1], hf.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(out.boxes[-1], real_frame(name, hf.pred_boxes, mask), atol=1e-5, rtol=0)
    # the intermediate stages are real predictions, not copies of the last one
    assert not torch.allclose(out.logits[0], out.logits[-1])


@pytest.mark.parametrize("name", case_params())
def test_intermediate_stages_equal_transformers_aux_outputs(name):
    """Every earlier stage equals transformers' own auxiliary outputs (auxiliary_loss=True, labels given).

    For DETR / Conditional DETR auxiliary_loss=True changes the forward (normed state fed to the next layer);
    the adapter must follow whatever the model does, including the own-query extra group.
    """
    if name in NO_AUX_STAGES:
        pytest.skip(f"{name}: transformers' auxiliary outputs are not per-stage predictions (see NO_AUX_STAGES)")
    a = make_adapter(name).eval()
    pix, mask, targets = batch(name=name)
    if name in ("detr", "conditional_detr"):  # auxiliary_loss=False (as built): stage 0 = layernorm(layer-0 output)
        with torch.no_grad():
            out = a(pix, mask)
            hf = a.model(pixel_values=pix, pixel_mask=mask, output_hidden_states=True)
            h0 = a.model.model.decoder.layernorm(hf.decoder_hidden_states[1])
            torch.testing.assert_close(out.logits[0], a.model.class_labels_classifier(h0), atol=1e-5, rtol=0)
    a.model.config.auxiliary_loss = True
    with torch.no_grad():
        out = a(pix, mask)
        hf = a.model(pixel_values=pix, pixel_mask=mask, labels=targets)
        g = a.decode_group(out, own_queries(a, out))
    assert len(hf.auxiliary_outputs) >= STAGES - 1
    for stage in range(STAGES - 1):
        torch.testing.assert_close(out.logits[stage], hf.auxiliary_outputs[stage]["logits"], atol=1e-5, rtol=0)
        torch.testing.assert_close(out.boxes[stage], real_frame(name, hf.auxiliary_outputs[stage]["pred_boxes"], mask),
                                   atol=1e-5, rtol=0)
    torch.testing.assert_close(out.logits[-1], hf.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.boxes, out.boxes, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------- extra group
@pytest.mark.parametrize("name", case_params())
def test_own_queries_reproduce_every_stage(name):
    a = make_adapter(name).eval()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
        g = a.decode_group(out, own_queries(a, out))
    assert isinstance(g, GroupOutput)
    torch.testing.assert_close(g.logits, out.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.boxes, out.boxes, atol=1e-5, rtol=0)
    torch.testing.assert_close(g.embeddings, out.embeddings, atol=1e-5, rtol=0)
    if name == "deformable_detr_two_stage" or "query_table" not in family_spec(CASES[name][0]).capabilities:
        assert not a.has_query_table
        with pytest.raises(NotImplementedError):
            a.query_table()
    else:
        assert a.has_query_table
        t = a.query_table()
        assert all(x is None or x.shape[0] == 1 for x in (t.content, t.position, t.reference))


@pytest.mark.parametrize("name", case_params())
def test_small_group_and_broadcast(name):
    """7 queries of a 30-query model; a batch-1 group equals the same queries given per image."""
    a = make_adapter(name).eval()
    pix, mask, _ = batch(name=name)
    with torch.no_grad():
        out = a(pix, mask)
        q = own_queries(a, out)
        g1 = a.decode_group(out, slice_group(q, 7, slice(0, 1)))           # batch dim 1 -> broadcast
        gb = a.decode_group(out, expand_group(slice_group(q, 7), 2))       # explicit batch of 2
    C = out.logits.shape[-1]
    assert g1.logits.shape == (STAGES, 2, 7, C) and g1.boxes.shape == (STAGES, 2, 7, 4)
    assert g1.embeddings.shape == (STAGES, 2, 7, 32)
    torch.testing.assert_close(g1.logits[:, 0], gb.logits[:, 0], atol=1e-5, rtol=0)
    torch.testing.assert_close(g1.boxes[:, 0], gb.boxes[:, 0], atol=1e-5, rtol=0)
    # the memory is per image: the two images give different predictions for the same queries (tiny random
    # RT-DETRs have a vanishing memory at init (~1e-11), identical for both images: nothing to see there)
    if not torch.allclose(out.encoder_outputs[-1][0], out.encoder_outputs[-1][1], atol=1e-4):
        assert not torch.allclose(g1.logits[:, 0], g1.logits[:, 1])


@pytest.mark.parametrize("name", case_params())
def test_teacher_group_through_projection_gradients(name):
    """Width-64 frozen teacher -> QueryProjection -> width-32 student decoder: grads reach the student's decoder,
    heads and the projection, never the teacher, nor the student's own query table."""
    teacher = make_adapter(name, d_model=64, seed=1).eval()
    teacher.requires_grad_(False)
    student = make_adapter(name, d_model=32, seed=2).train()
    pix, mask, _ = batch(name=name)
    t_out = teacher(pix, mask)  # no no_grad(): the frozen teacher must not leak gradients by itself
    t_group = own_queries(teacher, t_out)
    proj = build_query_projection(teacher, student)
    s_group = proj(t_group)
    for f, width in student.query_form.items():
        assert getattr(s_group, f).shape[-1] == width
    s_out = student(pix, mask)
    g = student.decode_group(s_out, s_group)
    assert g.logits.shape[:3] == (STAGES, 2, t_group.num_queries)
    loss = g.logits.float().pow(2).mean() + g.boxes.mean() + g.embeddings.pow(2).mean()
    loss.backward()
    named = dict(student.model.named_parameters())
    assert nonzero_grad(student.model.model.decoder.parameters()), "decoder got no gradient"
    assert nonzero_grad(p for n, p in named.items() if "class" in n), "class head got no gradient"
    assert nonzero_grad(p for n, p in named.items() if "bbox" in n), "box head got no gradient"
    table = [p for n, p in named.items()
             if any(k in n for k in ("query_position_embeddings", "query_refpoint_embeddings", "query_table",
                                     "query_feat", "reference_point_embed"))]
    assert not nonzero_grad(table), "the extra group attended to the student's own queries"
    assert all(p.grad is None for p in teacher.parameters()), "teacher parameters received gradients"
    if any(True for _ in proj.parameters()):
        assert nonzero_grad(proj.parameters()), "projection got no gradient"
    else:
        assert student.query_form == {"reference": 4}  # only width-free queries need no projection


def test_query_projection_forms():
    t = QueryGroup(content=torch.randn(1, 4, 64), position=torch.randn(1, 4, 64), reference=torch.rand(1, 4, 4))
    p = QueryProjection(64, 32)
    out = p(t)
    assert out.content.shape == (1, 4, 32) and out.position.shape == (1, 4, 32)
    assert out.reference is t.reference
    same = QueryProjection(32, 32, fields=("position",))
    assert count_parameters(same).total == 0
    x = QueryGroup(content=torch.randn(1, 4, 32), position=torch.randn(1, 4, 32))
    y = same(x)
    assert y.position is x.position and y.content is None
    with pytest.raises(ValueError, match="width"):
        p(x)
    with pytest.raises(ValueError):
        QueryProjection(64, 32, fields=("reference",))


def test_query_forms_that_cannot_be_derived_are_rejected():
    from types import SimpleNamespace as NS
    points = NS(family="t", d_model=32, query_form={"reference": 2})
    with pytest.raises(IncompatibleQueriesError, match="2-d"):
        build_query_projection(points, NS(family="s", d_model=32, query_form={"reference": 4}))
    with pytest.raises(IncompatibleQueriesError, match="position"):
        build_query_projection(NS(family="t", d_model=32, query_form={"content": 32}),
                               NS(family="s", d_model=32, query_form={"position": 32}))
    p = build_query_projection(make_adapter("deformable_detr", d_model=64), make_adapter("detr"))
    assert p.fields == ("position",) and p.derive == {}  # content dropped, position projected


# teacher -> student pairs covering every derivation of a missing query field
CROSS = [("dab_detr", "detr", {"position": "from_reference"}),
         ("rt_detr", "deformable_detr", {"position": "from_reference"}),
         ("dab_detr", "deformable_detr", {"content": "zeros", "position": "from_reference"}),
         ("detr", "rt_detr", {"content": "zeros", "reference": "from_teacher_boxes"}),
         ("deformable_detr", "adamixer", {"reference": "from_teacher_boxes"}),
         ("adamixer", "dab_detr", {})]
# the same two pairs with the learned reference connector (distill.query_prior.reference=learned)
LEARNED = [("detr", "rt_detr", {"content": "zeros", "reference": "from_position"}),
           ("deformable_detr", "adamixer", {"reference": "from_position"})]


@pytest.mark.parametrize("t_name,s_name,derive,reference",
                         [(*c, "teacher_boxes") for c in CROSS] + [(*c, "learned") for c in LEARNED],
                         ids=[f"{t}-to-{s}" for t, s, _ in CROSS] + [f"{t}-to-{s}-learned" for t, s, _ in LEARNED])
def test_cross_family_query_prior_derives_missing_fields(t_name, s_name, derive, reference):
    """A teacher's queries in another family's form reach the student's decoder: missing fields are derived (by
    trainable connectors that get gradients, or a reference from the teacher's first-stage boxes, exactly those
    boxes); the teacher gets none."""
    if not (_registered(t_name) and _registered(s_name)):
        pytest.skip("adapter not registered")
    teacher = make_adapter(t_name, d_model=64, seed=1).eval()
    teacher.requires_grad_(False)
    student = make_adapter(s_name, d_model=32, seed=2).train()
    pix, mask, _ = batch()
    proj = build_query_projection(teacher, student, reference)
    assert proj.derive == derive
    t_out = teacher(pix, mask)
    boxes = t_out.boxes[0] if proj.needs_boxes else None
    if boxes is not None:
        with pytest.raises(ValueError, match="teacher's boxes"):
            proj(own_queries(teacher, t_out))
    s_group = proj(own_queries(teacher, t_out), boxes=boxes)
    if boxes is not None:
        assert "reference" not in proj.derived
        assert torch.equal(s_group.reference, boxes[..., :s_group.reference.shape[-1]])
    for f in ("content", "position", "reference"):
        t = getattr(s_group, f)
        assert (t is not None) == (f in student.query_form)
        if t is not None:
            assert t.shape[-1] == student.query_form[f]
    if s_group.reference is not None:
        assert bool(((s_group.reference >= 0) & (s_group.reference <= 1)).all())
    g = student.decode_group(student(pix, mask), s_group)
    assert g.logits.shape[:3] == (STAGES, 2, NQ) and torch.isfinite(g.boxes).all()
    (g.logits.float().pow(2).mean() + g.boxes.mean()).backward()
    assert nonzero_grad(student.model.model.decoder.parameters()), "decoder got no gradient"
    for f in proj.derived:
        assert nonzero_grad(proj.derived[f].parameters()), f"derived {f} connector got no gradient"
    assert all(p.grad is None for p in teacher.parameters())


# ----------------------------------------------------------------------------------------------- criterion
def _reference_cost(logits, boxes, tgt, softmax: bool):
    """transformers' matcher cost for one image (class_cost 2, bbox 5, giou 2 as our LossConfig)."""
    from transformers.image_transforms import center_to_corners_format
    from transformers.loss.loss_for_object_detection import generalized_box_iou
    if softmax:
        cls = -logits.softmax(-1)[:, tgt["class_labels"]]
    else:
        p = logits.sigmoid()
        neg = 0.75 * (p ** 2) * (-(1 - p + 1e-8).log())
        pos = 0.25 * ((1 - p) ** 2) * (-(p + 1e-8).log())
        cls = (pos - neg)[:, tgt["class_labels"]]
    l1 = torch.cdist(boxes, tgt["boxes"], p=1)
    giou = -generalized_box_iou(center_to_corners_format(boxes), center_to_corners_format(tgt["boxes"]))
    return 5.0 * l1 + 2.0 * cls + 2.0 * giou


@pytest.mark.parametrize("name", case_params())
def test_criterion_assignments_match_transformers(name):
    from detrdistill.ops.criterion import SetCriterion
    from transformers.loss.loss_deformable_detr import DeformableDetrHungarianMatcher
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    a = make_adapter(name).train()  # train mode with targets: no extra (e.g. denoising) queries may appear
    softmax = a.class_activation == "softmax"
    crit = SetCriterion(a.num_classes, class_loss="ce" if softmax else "focal")
    pix, mask, targets = batch(name=name)
    out = a(pix, mask, targets=targets, criterion=crit)
    assert out.logits.shape[2] == NQ
    assert out.loss is not None and out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.loss_dict and all(torch.isfinite(torch.as_tensor(v)).all() for v in out.loss_dict.values())
    assert out.assignments.shape == (STAGES, 2, NQ) and out.assignments.dtype == torch.long
    hf_matcher = (HFMatcher if softmax else DeformableDetrHungarianMatcher)(class_cost=2.0, bbox_cost=5.0,
                                                                            giou_cost=2.0)
    with torch.no_grad():
        for stage in range(STAGES):
            hf_idx = hf_matcher({"logits": out.logits[stage], "pred_boxes": out.boxes[stage]}, targets)
            for b, tgt in enumerate(targets):
                ours = out.assignments[stage, b]
                q = torch.nonzero(ours >= 0).flatten()
                assert len(q) == len(tgt["boxes"]) and sorted(ours[q].tolist()) == list(range(len(q)))
                cost = _reference_cost(out.logits[stage, b], out.boxes[stage, b], tgt, softmax)
                ours_total = cost[q, ours[q]].sum()
                hf_total = cost[hf_idx[b][0], hf_idx[b][1]].sum()
                torch.testing.assert_close(ours_total, hf_total, atol=1e-4, rtol=1e-5)
    out.loss.backward()
    assert nonzero_grad(a.model.model.decoder.parameters())


def test_no_criterion_no_loss():
    a = make_adapter("detr").eval()
    pix, mask, targets = batch()
    with torch.no_grad():
        out = a(pix, mask, targets=targets)
    assert out.loss is None and out.assignments is None and out.loss_dict == {}
    with pytest.raises(ValueError, match="pixel_mask"):
        a(pix, mask[:, :10])
