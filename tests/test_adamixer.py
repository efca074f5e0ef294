"""AdaMixer (detrdistill.models.adamixer): the operators against direct loop references, and the model itself.

* 3D sampling vs an explicit per (image, query, group, point, level) bilinear interpolation with the Gaussian-like
  level weights written out;
* adaptive mixing vs per (image, query, group) matrix products and a hand-written LayerNorm;
* model: shapes, AdaMixer's initial state, save / load round trip (Auto classes), a few optimizer steps lower the
  loss on a fixed batch, extra-group decoding of the model's own queries reproduces every stage exactly.
"""
from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoConfig, AutoModelForObjectDetection, ResNetConfig

from detrdistill.models.adamixer import register_adamixer
from detrdistill.models.adamixer import AdaMixerConfig, AdaMixerForObjectDetection
from detrdistill.models.adamixer.box_coding import (cxcywh_to_xyzr, image_sizes_from_mask, refine_xyzr,
                                                    xyzr_to_cxcywh)
from detrdistill.models.adamixer.mixing import AdaptiveMixing
from detrdistill.models.adamixer.sampling import make_sample_points, sample_3d

pytestmark = pytest.mark.usefixtures("one_thread")

NUM_CLASSES, NQ, STAGES, D = 4, 10, 2, 32


# ----------------------------------------------------------------------------------------------- references
def _bilinear(value: torch.Tensor, u: float, v: float) -> torch.Tensor:
    """value [c, H, W] at continuous coordinates (u = column, v = row; pixel centres at integers), zeros outside."""
    _, H, W = value.shape
    x0, y0 = math.floor(u), math.floor(v)
    out = torch.zeros(value.shape[0], dtype=value.dtype)
    for yy, wy in ((y0, 1 - (v - y0)), (y0 + 1, v - y0)):
        for xx, wx in ((x0, 1 - (u - x0)), (x0 + 1, u - x0)):
            if 0 <= yy < H and 0 <= xx < W:
                out += wy * wx * value[:, yy, xx]
    return out


def _reference_sample_3d(features, strides, points, n_groups, tau):
    B, N, K, _ = points.shape
    P = K // n_groups
    C = features[0].shape[1]
    cg = C // n_groups
    out = torch.zeros(B, N, n_groups, P, cg, dtype=points.dtype)
    for b in range(B):
        for n in range(N):
            for k in range(K):
                g, p = divmod(k, P)
                x, y, z = (float(t) for t in points[b, n, k])
                logits = [-((z - math.log2(s)) ** 2) / tau for s in strides]
                norm = sum(math.exp(a) for a in logits)
                for feat, s, a in zip(features, strides, logits):
                    # align_corners=False: input pixel x lies at feature column x / s - 0.5
                    val = _bilinear(feat[b, g * cg:(g + 1) * cg], x / s - 0.5, y / s - 0.5)
                    out[b, n, g, p] += math.exp(a) / norm * val
    return out


def _layer_norm_2d(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.sum() / x.numel()
    var = ((x - mean) ** 2).sum() / x.numel()
    return (x - mean) / torch.sqrt(var + eps)


def _reference_mixing(mixer: AdaptiveMixing, sampled, query):
    B, N, G, P, cg = sampled.shape
    W, bias = mixer.parameter_generator.weight, mixer.parameter_generator.bias
    per_group = cg * cg + mixer.in_points * mixer.out_points
    out = torch.zeros_like(query)
    for b in range(B):
        for n in range(N):
            params = W @ query[b, n] + bias
            mixed = []
            for g in range(G):
                chunk = params[g * per_group:(g + 1) * per_group]
                M = chunk[:cg * cg].reshape(cg, cg)
                S = chunk[cg * cg:].reshape(mixer.out_points, mixer.in_points)
                x = torch.relu(_layer_norm_2d(sampled[b, n, g] @ M))
                x = torch.relu(_layer_norm_2d(S @ x))
                mixed.append(x.flatten())
            out[b, n] = query[b, n] + mixer.out_proj.weight @ torch.cat(mixed) + mixer.out_proj.bias
    return out


# ----------------------------------------------------------------------------------------------- operators
def test_sample_3d_matches_loop_reference():
    g = torch.Generator().manual_seed(0)
    strides = [4, 8, 16]
    features = [torch.randn(2, 6, 24 // s * 2, 32 // s, generator=g, dtype=torch.float64) for s in strides]
    # points spread over and beyond the 32 x 48 pixel extent (some fall outside: zeros there), z around the levels
    xy = torch.rand(2, 3, 6, 2, generator=g, dtype=torch.float64) * torch.tensor([44.0, 60.0]) - 6
    z = torch.rand(2, 3, 6, 1, generator=g, dtype=torch.float64) * 4 + 1
    points = torch.cat([xy, z], -1)
    ours = sample_3d(features, strides, points, n_groups=3, tau=2.0)
    ref = _reference_sample_3d(features, strides, points, n_groups=3, tau=2.0)
    assert ours.shape == (2, 3, 3, 2, 2)
    torch.testing.assert_close(ours, ref, atol=1e-10, rtol=0)
    assert ref.abs().sum() > 0


def test_sample_points_follow_the_box():
    xyzr = cxcywh_to_xyzr(torch.tensor([[[0.5, 0.25, 0.5, 0.25]]]), torch.tensor([[64.0, 32.0]]))  # 32 x 8 px box
    offsets = torch.tensor([[[[0.5, -0.5, -1.0], [0.0, 0.0, 0.0]]]])
    pts = make_sample_points(offsets, xyzr)
    torch.testing.assert_close(pts[0, 0, 0], torch.tensor([32.0 + 16.0, 8.0 - 4.0, 4.0 - 1.0]))  # z = log2(16)
    torch.testing.assert_close(pts[0, 0, 1], torch.tensor([32.0, 8.0, 4.0]))


def test_adaptive_mixing_matches_loop_reference():
    torch.manual_seed(0)
    mixer = AdaptiveMixing(in_dim=8, query_dim=12, in_points=3, out_points=5, n_groups=2).double()
    with torch.no_grad():  # AdaMixer zero-initialises the generator weight: make the query matter
        mixer.parameter_generator.weight.normal_(0, 0.3)
    sampled = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    query = torch.randn(2, 3, 12, dtype=torch.float64)
    torch.testing.assert_close(mixer(sampled, query), _reference_mixing(mixer, sampled, query), atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="do not match"):
        mixer(sampled[..., :2, :], query)


def test_box_coding_round_trip_and_refinement():
    wh = torch.tensor([[64.0, 48.0], [32.0, 96.0]])
    boxes = torch.tensor([[[0.3, 0.6, 0.2, 0.5]], [[0.5, 0.5, 1.0, 1.0]]])
    xyzr = cxcywh_to_xyzr(boxes, wh)
    torch.testing.assert_close(xyzr_to_cxcywh(xyzr, wh), boxes)
    torch.testing.assert_close(xyzr[1, 0, 2], torch.tensor(0.5 * math.log2(32.0 * 96.0)))  # z = log2 sqrt(area)
    moved = refine_xyzr(xyzr, torch.tensor([0.5, 0.0, 1.0, 0.0]).expand_as(xyzr))
    torch.testing.assert_close(moved[..., 0] - xyzr[..., 0], 0.5 * torch.pow(2.0, xyzr[..., 2]))
    torch.testing.assert_close(xyzr_to_cxcywh(moved, wh)[..., 2:], 2 * boxes[..., 2:])  # z + 1 doubles both sides
    mask = torch.zeros(2, 10, 12, dtype=torch.long)
    mask[0] = 1
    mask[1, :7, :5] = 1
    torch.testing.assert_close(image_sizes_from_mask(mask), torch.tensor([[12.0, 10.0], [5.0, 7.0]]))


# ----------------------------------------------------------------------------------------------- model
def tiny_config(**kw) -> AdaMixerConfig:
    bb = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], layer_type="basic",
                      out_features=["stage2", "stage3", "stage4"])
    args = dict(backbone_config=bb, d_model=D, num_queries=NQ, decoder_layers=STAGES, decoder_ffn_dim=64,
                decoder_attention_heads=4, num_feature_levels=4, in_points=4, out_points=8, n_groups=4,
                id2label={i: f"c{i}" for i in range(NUM_CLASSES)})
    return AdaMixerConfig(**{**args, **kw})


def tiny_model(seed: int = 0, **kw) -> AdaMixerForObjectDetection:
    torch.manual_seed(seed)
    return AdaMixerForObjectDetection(tiny_config(**kw))


def fixed_batch():
    g = torch.Generator().manual_seed(1)
    pix = torch.randn(2, 3, 64, 96, generator=g)
    mask = torch.ones(2, 64, 96, dtype=torch.long)
    mask[1, 48:], mask[1, :, 64:] = 0, 0
    labels = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3],
                                                                            [0.7, 0.6, 0.3, 0.2]])},
              {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    return pix * mask[:, None], mask, labels


def test_forward_shapes_and_initial_state():
    m = tiny_model().eval()
    pix, mask, _ = fixed_batch()
    with torch.no_grad():
        out = m(pix, mask)
    assert out.logits.shape == (2, NQ, NUM_CLASSES) and out.pred_boxes.shape == (2, NQ, 4)
    assert out.intermediate_logits.shape == (2, STAGES, NQ, NUM_CLASSES)
    assert out.intermediate_boxes.shape == (2, STAGES, NQ, 4)
    assert out.intermediate_hidden_states.shape == (2, STAGES, NQ, D)
    torch.testing.assert_close(out.logits, out.intermediate_logits[:, -1])
    # C3-C5 of the ResNet + one stride-2 extra level, all d_model wide
    assert m.model.strides == [8, 16, 32, 64]
    assert [tuple(f.shape) for f in out.feature_maps] == [(2, D, 8, 12), (2, D, 4, 6), (2, D, 2, 3), (2, D, 1, 2)]
    assert [tuple(f.shape) for f in out.feature_masks] == [(2, 8, 12), (2, 4, 6), (2, 2, 3), (2, 1, 2)]
    assert out.feature_masks[0][0].all() and not out.feature_masks[0][1].all()
    torch.testing.assert_close(out.image_sizes, torch.tensor([[96.0, 64.0], [64.0, 48.0]]))
    # AdaMixer's init: whole-image boxes, zero box deltas (every stage predicts the whole image), zero generators,
    # a 0.01 class prior in the bias
    whole = torch.tensor([0.5, 0.5, 1.0, 1.0]).expand_as(out.intermediate_boxes)
    torch.testing.assert_close(out.intermediate_boxes, whole)
    stage = m.model.decoder[0]
    assert not stage.sampling_offset_generator.weight.any() and not stage.mixing.parameter_generator.weight.any()
    torch.testing.assert_close(stage.class_embed.bias, torch.full((NUM_CLASSES,), -math.log(99.0)))
    assert not torch.allclose(out.logits[0], out.logits[1]), "the two images give the same predictions"


def test_bad_config_is_one_line_error():
    from detrdistill.errors import DetrDistillError
    with pytest.raises(DetrDistillError, match="n_groups"):
        tiny_model(n_groups=3)
    with pytest.raises(ValueError, match="multiple of 8"):
        tiny_model(d_model=36, decoder_attention_heads=4)


def test_save_load_round_trip(tmp_path):
    m = tiny_model().eval()
    pix, mask, _ = fixed_batch()
    with torch.no_grad():
        ref = m(pix, mask)
    m.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and (tmp_path / "model.safetensors").is_file()
    register_adamixer()
    assert isinstance(AutoConfig.from_pretrained(tmp_path), AdaMixerConfig)
    loaded = AutoModelForObjectDetection.from_pretrained(tmp_path).eval()
    assert type(loaded) is AdaMixerForObjectDetection
    with torch.no_grad():
        out = loaded(pix, mask)
    assert torch.equal(out.intermediate_logits, ref.intermediate_logits)
    assert torch.equal(out.intermediate_boxes, ref.intermediate_boxes)
    assert torch.equal(out.intermediate_hidden_states, ref.intermediate_hidden_states)


def test_optimizer_steps_lower_the_loss():
    m = tiny_model().train()
    pix, mask, labels = fixed_batch()
    opt = torch.optim.AdamW(m.parameters(), lr=2e-3)
    losses = []
    for _ in range(6):
        out = m(pix, mask, labels=labels)
        assert set(out.loss_dict) == {"cls", "bbox", "giou"} and len(out.auxiliary_outputs) == STAGES - 1
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    assert losses[-1] < 0.9 * losses[0], losses
    # the initial boxes are fixed (AdaMixer), the content table is learned
    assert m.model.query_table.boxes.grad is None and m.model.query_table.content.grad is not None


def test_extra_group_with_own_queries_reproduces_every_stage():
    m = tiny_model().eval()
    with torch.no_grad():  # a trained-like state: non-zero generators and box deltas
        for p in m.model.decoder.parameters():
            if p.dim() > 1 and not p.any():
                p.normal_(0, 0.1)
        m.model.decoder[0].bbox_embed.weight.normal_(0, 0.1)
    pix, mask, _ = fixed_batch()
    with torch.no_grad():
        out = m(pix, mask)
        content, boxes = m.model.initial_queries()
        extra = m.decode_queries(out.feature_maps, content, boxes, out.image_sizes)
        part = m.decode_queries(out.feature_maps, content[:, :3], boxes[:, :3], out.image_sizes)
    assert not torch.allclose(out.intermediate_boxes[:, 0], out.intermediate_boxes[:, 1])
    assert torch.equal(extra.intermediate_logits, out.intermediate_logits)
    assert torch.equal(extra.intermediate_boxes, out.intermediate_boxes)
    assert torch.equal(extra.intermediate_hidden_states, out.intermediate_hidden_states)
    # a smaller group is a separate decoding (self-attention sees only its own queries): different predictions
    assert part.intermediate_logits.shape == (2, STAGES, 3, NUM_CLASSES)
    assert not torch.allclose(part.intermediate_logits[:, 1], out.intermediate_logits[:, 1, :3])


# ----------------------------------------------------------------------------------------------- CLI
@pytest.mark.slow  # trains, distils and evaluates through the CLI
def test_cli_train_distill_eval(synth_dir, tmp_path):
    """`detrdistill train / distill / eval` with model.family=adamixer: the three DETRDistill terms are logged."""
    from detrdistill.cli import main
    from detrdistill.engine.metrics import read_metrics
    from tests.conftest import tiny_overrides

    def sets(overrides):
        return sum((["--set", o] for o in overrides), [])

    amx = ["model.family=adamixer", "model.hf_overrides={in_points: 4, out_points: 8, n_groups: 2}",
           "train.eval_every_epochs=0"]
    teacher = tmp_path / "teacher"
    assert main(["train", *sets(tiny_overrides(teacher, synth_dir, *amx, "model.d_model=64",
                                               "train.max_steps=2"))]) == 0
    student = tmp_path / "student"
    assert main(["distill", "--teacher", str(teacher / "model"),
                 *sets(tiny_overrides(student, synth_dir, *amx, "train.max_steps=2"))]) == 0
    rec = [r for r in read_metrics(student / "metrics.jsonl") if "loss" in r][-1]
    terms = {k.split("/", 1)[1] for k in rec if k.startswith("loss/")}
    assert {"logits_cls", "logits_bbox", "logits_giou", "feature", "query_prior_cls", "query_prior_bbox",
            "query_prior_giou"} <= terms
    assert all(rec[f"loss/{t}"] > 0 for t in ("logits_cls", "feature", "query_prior_cls"))
    assert main(["eval", "--model", str(student / "model"), "--eval-dir", str(tmp_path / "ev"),
                 *sets(tiny_overrides(student, synth_dir, *amx))]) == 0
    assert (tmp_path / "ev" / "eval.json").is_file()
