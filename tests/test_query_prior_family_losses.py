"""The query-prior group of a D-FINE / DEIMv2 student gets its family's box-distribution losses (FGL + DDF) under
the family recipe, as the student's own auxiliary layers do (detrdistill/models/adapters/d_fine_group_loss.py)."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig, LossConfig
from detrdistill.distillation import Distiller
from detrdistill.models.adapters.d_fine_group_loss import distribution_loss_module, group_distribution_losses
from detrdistill.models.family_loss import student_criterion
from tests.test_adapters import batch, make_adapter

pytestmark = pytest.mark.usefixtures("one_thread")
GROUP_KEYS = {"query_prior_fgl", "query_prior_ddf"}


def _step(s_name: str, config: DistillConfig, recipe: str = "family"):
    teacher = make_adapter("d_fine", d_model=64, seed=1)
    student = make_adapter(s_name, d_model=32, seed=2)
    dist = Distiller(teacher, student, config)
    dist.train()
    pix, mask, targets = batch()
    return dist, dist(pix, mask, targets, student_criterion(LossConfig(recipe=recipe), student))


@pytest.mark.parametrize("s_name", ["d_fine", "deimv2"])
def test_a_distribution_student_s_group_gets_fgl_and_ddf(s_name):
    dist, out = _step(s_name, DistillConfig())
    assert GROUP_KEYS <= set(out.loss_dict)
    assert out.loss_dict["query_prior_fgl"] > 0 and torch.isfinite(out.loss_dict["query_prior_ddf"])
    # they are part of the query-prior term (its weight included) and of the total
    parts = out.loss_dict
    term = sum(v for k, v in parts.items() if k.startswith("query_prior_"))
    assert torch.allclose(out.parts["query_prior"].detach(), term, rtol=1e-5)


@pytest.mark.parametrize("s_name,config,recipe", [
    ("d_fine", DistillConfig(query_prior={"family_losses": False}), "family"),
    ("d_fine", DistillConfig(), "set"),          # the set criterion: the student's own queries get no FGL either
    ("rt_detr", DistillConfig(), "family"),       # no box distributions
], ids=["switched-off", "set-recipe", "rt_detr"])
def test_no_group_distribution_losses_otherwise(s_name, config, recipe):
    _, out = _step(s_name, config, recipe)
    assert not GROUP_KEYS & set(out.loss_dict)
    assert "query_prior_bbox" in out.loss_dict


@pytest.fixture
def decoded_group():
    """A D-FINE student's forward on the padded test batch and a group of its own queries decoded again."""
    student = make_adapter("d_fine", d_model=32, seed=2)
    student.train()
    pix, mask, targets = batch()
    out = student(pix, mask)
    group = student.decode_group(out, out.queries)
    L, B, N = group.logits.shape[:3]
    assignments = torch.full((L, B, N), -1, dtype=torch.long)
    for b, t in enumerate(targets):
        assignments[:, b, :len(t["class_labels"])] = torch.arange(len(t["class_labels"]))
    return student, group, targets, assignments


def _losses(student, group, targets, assignments, state=None):
    return group_distribution_losses(distribution_loss_module(student.model.config), state or group.state,
                                     group.logits, targets, assignments, num_boxes=8.0, fgl_weight=1.0,
                                     ddf_weight=1.0)


def test_fgl_reads_matched_queries_only_and_no_gt_gives_none(decoded_group):
    student, group, targets, assignments = decoded_group
    base = _losses(student, group, targets, assignments)
    corners = group.state["corners"].detach().clone()
    unmatched = assignments[0] < 0  # [B, N]
    shift = 3.0 * torch.randn(corners.shape, generator=torch.Generator().manual_seed(0))  # not uniform over bins
    keep = (~unmatched)[:, None, :, None] | (torch.arange(corners.shape[1]) == corners.shape[1] - 1)[None, :, None, None]
    corners = corners + shift.masked_fill(keep, 0.0)  # unmatched queries of every layer but the last
    moved = _losses(student, group, targets, assignments, {**group.state, "corners": corners})
    assert torch.allclose(moved["fgl"], base["fgl"].detach(), rtol=1e-5)
    assert not torch.allclose(moved["ddf"], base["ddf"].detach())  # DDF reads every query
    none = _losses(student, group, targets, torch.full_like(assignments, -1))
    assert float(none["fgl"].detach()) == 0.0


def test_fgl_uses_the_model_frame_on_a_padded_batch(decoded_group):
    student, group, targets, assignments = decoded_group
    scale = group.state["frame_scale"]
    assert scale is not None and not torch.allclose(scale[1], torch.ones(4))  # image 1 is padded
    with_frame = _losses(student, group, targets, assignments)
    in_model_frame = [{**t, "boxes": t["boxes"] * s} for t, s in zip(targets, scale)]
    direct = _losses(student, group, in_model_frame, assignments, {**group.state, "frame_scale": None})
    unconverted = _losses(student, group, targets, assignments, {**group.state, "frame_scale": None})
    assert torch.allclose(with_frame["fgl"], direct["fgl"], rtol=1e-5)
    assert not torch.allclose(with_frame["fgl"], unconverted["fgl"], rtol=1e-3)


def test_gradients_reach_every_distribution_head_but_the_last(decoded_group):
    """As on D-FINE's own queries: FGL on every layer but the last, DDF toward the (detached) last layer."""
    student, group, targets, assignments = decoded_group
    losses = _losses(student, group, targets, assignments)
    heads = student.model.model.decoder.bbox_embed
    params = [p for h in heads for p in h.parameters()]
    grads = torch.autograd.grad(losses["fgl"] + losses["ddf"], params, allow_unused=True)
    per_head, i = [], 0
    for h in heads:
        n = len(list(h.parameters()))
        per_head.append(sum(0.0 if g is None else float(g.abs().sum()) for g in grads[i:i + n]))
        i += n
    assert all(v > 0 for v in per_head[:-1]) and per_head[-1] == 0.0
