"""The query-prior group of a student trained by its family's recipe: the family's box-distribution losses (FGL +
DDF) beside the set criterion (``group_loss=set_distributions``, D-FINE / DEIMv2), or the family's whole loss
(``group_loss=family``), as the student's own queries get them (detrdistill/models/adapters/group_family_loss.py)."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig, LossConfig
from detrdistill.distillation import Distiller
from detrdistill.models.adapters.group_family_loss import family_loss_module, group_family_losses
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
def test_set_distributions_gives_a_distribution_student_s_group_fgl_and_ddf(s_name):
    dist, out = _step(s_name, DistillConfig(query_prior={"group_loss": "set_distributions"}))
    assert GROUP_KEYS <= set(out.loss_dict)
    assert out.loss_dict["query_prior_fgl"] > 0 and torch.isfinite(out.loss_dict["query_prior_ddf"])
    # they are part of the query-prior term (its weight included) and of the total
    parts = out.loss_dict
    term = sum(v for k, v in parts.items() if k.startswith("query_prior_"))
    assert torch.allclose(out.parts["query_prior"].detach(), term, rtol=1e-5)


@pytest.mark.parametrize("s_name,config,recipe", [
    ("d_fine", DistillConfig(query_prior={"group_loss": "set"}), "family"),
    ("d_fine", DistillConfig(), "set"),          # the set criterion: the student's own queries get no FGL either
    ("rt_detr", DistillConfig(query_prior={"group_loss": "set_distributions"}), "family"),  # no box distributions
], ids=["switched-off", "set-recipe", "rt_detr"])
def test_no_group_distribution_losses_otherwise(s_name, config, recipe):
    _, out = _step(s_name, config, recipe)
    assert not GROUP_KEYS & set(out.loss_dict)
    assert {"query_prior_cls", "query_prior_bbox"} <= set(out.loss_dict)  # the set criterion's keys


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


def _losses(student, group, targets, assignments, state=None, terms=("local",)):
    return group_family_losses(family_loss_module("DFineLoss", student.model.config), state or group.state,
                               group.logits, targets, assignments, num_boxes=8.0, terms=terms)


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
    whole = ("vfl", "boxes", "local")
    with_frame = _losses(student, group, targets, assignments, terms=whole)
    in_model_frame = [{**t, "boxes": t["boxes"] * s} for t, s in zip(targets, scale)]
    direct = _losses(student, group, in_model_frame, assignments, {**group.state, "frame_scale": None}, whole)
    unconverted = _losses(student, group, targets, assignments, {**group.state, "frame_scale": None}, whole)
    for key in ("fgl", "vfl", "bbox", "giou"):
        assert torch.allclose(with_frame[key], direct[key], rtol=1e-5), key
        assert not torch.allclose(with_frame[key], unconverted[key], rtol=1e-3), key


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


@pytest.mark.parametrize("s_name,keys", [("d_fine", {"vfl", "bbox", "giou", "fgl", "ddf"}),
                                         ("deimv2", {"mal", "bbox", "giou", "fgl", "ddf"}),
                                         ("rt_detr", {"vfl", "bbox", "giou"})])
def test_group_loss_family_trains_the_group_with_the_family_s_own_loss(s_name, keys):
    dist, out = _step(s_name, DistillConfig())  # family is the default
    assert DistillConfig().query_prior.group_loss == "family"
    got = {k.removeprefix("query_prior_") for k in out.loss_dict if k.startswith("query_prior_")}
    assert got == keys  # the family's terms replace the set criterion's cls / bbox / giou
    assert all(torch.isfinite(out.loss_dict[f"query_prior_{k}"]) for k in keys)
    out.loss.backward()
    grads = dict(dist.named_trainable_parameters())
    assert any(p.grad is not None and bool(p.grad.abs().sum() > 0)
               for n, p in grads.items() if n.startswith("query_projection."))


def test_group_loss_family_equals_the_family_loss_on_the_student_s_own_queries():
    """The group of the student's own queries, assigned by transformers' own matcher on the model's outputs, gets
    exactly the matching queries' varifocal / box terms of transformers' loss on that layer."""
    student = make_adapter("rt_detr", d_model=32, seed=2)
    student.eval()  # no denoising groups, no dropout: the group's decode equals the model's own
    pix, mask, targets = batch()
    mask[:] = 1  # an unpadded batch: one frame
    with torch.no_grad():
        out = student(pix, mask)
        group = student.decode_group(out, out.queries)
    loss = family_loss_module("RTDetrLoss", student.model.config)
    last = {"logits": group.logits[-1], "pred_boxes": group.boxes[-1]}
    indices = loss.matcher(last, targets)
    assignments = torch.full(group.logits.shape[:3], -1, dtype=torch.long)
    for b, (q, t) in enumerate(indices):
        assignments[:, b, q] = t
    ours = group_family_losses(loss, group.state, group.logits, targets, assignments, 8.0, ("vfl", "boxes"))
    theirs = {}
    for layer in range(group.logits.shape[0]):
        lay = {"logits": group.logits[layer], "pred_boxes": group.boxes[layer].clamp(0, 1)}
        for term in ("vfl", "boxes"):
            for k, v in loss.get_loss(term, lay, targets, indices, 8.0).items():
                theirs[k] = theirs.get(k, 0) + loss.weight_dict[k] * v
    for k, v in theirs.items():
        assert torch.allclose(ours[k.removeprefix("loss_")], v, rtol=1e-5), k


@pytest.mark.parametrize("old,new", [(True, "set_distributions"), (False, "set")])
def test_a_config_saved_with_the_old_family_losses_key_still_loads(old, new):
    assert DistillConfig(query_prior={"family_losses": old}).query_prior.group_loss == new
    assert DistillConfig(query_prior={"family_losses": old, "group_loss": "family"}).query_prior.group_loss == "family"
    with pytest.raises(Exception, match="not true / false"):
        DistillConfig(query_prior={"family_losses": "yes"})


@pytest.mark.parametrize("s_name", ["lw_detr", "rf_detr"])
def test_a_recipe_family_without_a_group_loss_keeps_the_set_criterion_for_the_group(s_name):
    """LW-DETR / RF-DETR train with their own transformers loss but have no group loss here: under group_loss=family
    their group is trained by the set criterion, not left without a loss."""
    teacher = make_adapter("rt_detr", d_model=64, seed=1)
    student = make_adapter(s_name, d_model=32, seed=2)
    assert student.has_family_loss and not student.has_group_family_loss
    dist = Distiller(teacher, student, DistillConfig(query_prior={"group_loss": "family"}))
    dist.train()
    pix, mask, targets = batch(name="rf_detr")
    out = dist(pix, mask, targets, student_criterion(LossConfig(recipe="family"), student))
    got = {k for k in out.loss_dict if k.startswith("query_prior_")}
    assert got == {"query_prior_cls", "query_prior_bbox", "query_prior_giou"}
    assert out.parts["query_prior"] > 0
