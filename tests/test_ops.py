"""Tests of detrdistill.ops: box ops, Hungarian matcher and set criterion (the assignment solver: test_assignment.py).

Reference implementations: scipy's linear_sum_assignment, brute force, and transformers' own DETR / Deformable DETR
matchers and losses on identical inputs.
"""
from __future__ import annotations

import itertools
import os
import tempfile
import types

import pytest
import torch
from scipy.optimize import linear_sum_assignment

from detrdistill.config import LossConfig
from detrdistill.ops import (SetCriterion, HungarianMatcher, box_iou, cxcywh_to_xyxy, denoising_assignments,
                             generalized_box_iou, generalized_box_iou_pairs, pad_targets,
                             reduce_num_boxes, xyxy_to_cxcywh)

hf_od = pytest.importorskip("transformers.loss.loss_for_object_detection")
hf_ddetr = pytest.importorskip("transformers.loss.loss_deformable_detr")


# ------------------------------------------------------------------------------------------------------ helpers
def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def rand_boxes(shape, g) -> torch.Tensor:
    """Valid normalised cxcywh boxes [..., 4] well inside [0, 1]."""
    c = torch.rand(*shape, 2, generator=g) * 0.6 + 0.2
    wh = torch.rand(*shape, 2, generator=g) * 0.3 + 0.02
    return torch.cat([c, wh], -1)


def make_batch(counts, L=3, N=12, C=5, g=None, extra_class=False):
    g = g or gen(0)
    B = len(counts)
    logits = torch.randn(L, B, N, C + int(extra_class), generator=g, dtype=torch.float64).float()
    boxes = rand_boxes((L, B, N), g)
    targets = [{"class_labels": torch.randint(0, C, (t,), generator=g), "boxes": rand_boxes((t,), g)} for t in counts]
    return logits, boxes, targets


def total_cost(cost: torch.Tensor, assign: torch.Tensor) -> float:
    """cost [N, M], assign [N] -> summed cost of the matched pairs (float64)."""
    rows = (assign >= 0).nonzero().squeeze(1)
    return float(cost.double()[rows, assign[rows]].sum())


def check_valid_assignment(assign, n_rows_valid, n_cols_valid, row_valid=None, col_valid=None):
    """A proper partial matching of the right size on valid rows/cols."""
    matched = assign[assign >= 0]
    assert len(set(matched.tolist())) == len(matched), "a column is used twice"
    assert len(matched) == min(n_rows_valid, n_cols_valid)
    if row_valid is not None:
        assert not (assign[~row_valid] >= 0).any()
    if col_valid is not None and len(matched):
        assert col_valid[matched].all()


def scipy_opt(cost: torch.Tensor) -> float:
    c = cost.double().numpy()
    if c.shape[0] == 0 or c.shape[1] == 0:
        return 0.0
    r, j = linear_sum_assignment(c)
    return float(c[r, j].sum())


def brute_force_opt(cost: torch.Tensor) -> float:
    n, m = cost.shape
    c = cost.double()
    if n <= m:
        return min(float(sum(c[i, p[i]] for i in range(n))) for p in itertools.permutations(range(m), n))
    return min(float(sum(c[p[j], j] for j in range(m))) for p in itertools.permutations(range(n), m))


def to_dense(indices, B, N) -> torch.Tensor:
    """transformers' list of (query idx, target idx) per image -> [B, N] dense assignment."""
    out = torch.full((B, N), -1, dtype=torch.long)
    for b, (i, j) in enumerate(indices):
        out[b, i] = j
    return out


def to_indices(assign: torch.Tensor):
    """[B, N] dense -> transformers' list of (query idx, target idx)."""
    res = []
    for a in assign:
        q = (a >= 0).nonzero().squeeze(1)
        res.append((q, a[q]))
    return res


# ---------------------------------------------------------------------------------------------------------- boxes
def test_box_conversions_roundtrip():
    b = rand_boxes((7, 3), gen(1))
    xyxy = cxcywh_to_xyxy(b)
    assert (xyxy[..., 2:] >= xyxy[..., :2]).all()
    torch.testing.assert_close(xyxy_to_cxcywh(xyxy), b, rtol=0, atol=1e-6)
    torch.testing.assert_close(xyxy, hf_od.center_to_corners_format(b), rtol=0, atol=0)


def test_iou_giou_match_transformers_and_broadcast():
    g = gen(2)
    a, b = cxcywh_to_xyxy(rand_boxes((3, 8), g)), cxcywh_to_xyxy(rand_boxes((3, 5), g))
    iou, union = box_iou(a, b)
    giou = generalized_box_iou(a, b)
    assert iou.shape == giou.shape == union.shape == (3, 8, 5)
    for k in range(3):
        ref_iou, ref_union = hf_od.box_iou(a[k], b[k])
        torch.testing.assert_close(iou[k], ref_iou, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(union[k], ref_union, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(giou[k], hf_od.generalized_box_iou(a[k], b[k]), rtol=1e-6, atol=1e-7)
    # broadcasting a leading dim of 1, and the elementwise version equals the diagonal
    torch.testing.assert_close(generalized_box_iou(a[:1], b), generalized_box_iou(a[:1].expand(3, -1, -1), b))
    pairs = generalized_box_iou_pairs(a[:, :5], b)
    torch.testing.assert_close(pairs, torch.diagonal(giou[:, :5], dim1=1, dim2=2), rtol=1e-6, atol=1e-7)
    assert ((giou >= -1 - 1e-6) & (giou <= 1 + 1e-6)).all()


def test_giou_identical_and_far_boxes():
    b = torch.tensor([[0.1, 0.1, 0.3, 0.4], [0.5, 0.5, 0.9, 0.7]])
    torch.testing.assert_close(generalized_box_iou_pairs(b, b), torch.ones(2))
    torch.testing.assert_close(torch.diagonal(generalized_box_iou(b, b)), torch.ones(2))
    far = torch.tensor([[0.0, 0.0, 0.1, 0.1]]), torch.tensor([[0.8, 0.8, 1.0, 1.0]])
    assert generalized_box_iou_pairs(*far).item() < 0
    assert generalized_box_iou(*far).item() < -0.5


def test_degenerate_boxes_are_finite_with_finite_grads():
    a = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.2, 0.2, 0.2, 0.6], [0.3, 0.3, 0.1, 0.1]], requires_grad=True)
    b = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.1, 0.1, 0.4, 0.4], [0.3, 0.3, 0.1, 0.1]])
    pairs = generalized_box_iou_pairs(a, b)
    full = generalized_box_iou(a, b)
    iou, _ = box_iou(a, b)
    assert torch.isfinite(pairs).all() and torch.isfinite(full).all() and torch.isfinite(iou).all()
    assert pairs[0].item() == 0.0  # two identical points: union = enclose = 0 -> 0, not nan
    (pairs.sum() + full.sum()).backward()
    assert torch.isfinite(a.grad).all()


# ----------------------------------------------------------------------------------------------------- matcher
def test_pad_targets():
    targets = [{"class_labels": torch.tensor([3, 1]), "boxes": torch.rand(2, 4)},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)},
               {"class_labels": torch.tensor([2]), "boxes": torch.rand(1, 4)}]
    labels, boxes, valid = pad_targets(targets, "cpu")
    assert labels.shape == (3, 2) and boxes.shape == (3, 2, 4) and valid.shape == (3, 2)
    assert valid.tolist() == [[True, True], [False, False], [True, False]]
    assert labels[0].tolist() == [3, 1] and labels[2, 0].item() == 2
    torch.testing.assert_close(boxes[0], targets[0]["boxes"])
    torch.testing.assert_close(boxes[2, 0], targets[2]["boxes"][0])
    empty = [{"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}] * 2
    labels, boxes, valid = pad_targets(empty, "cpu")
    assert labels.shape == (2, 0) and boxes.shape == (2, 0, 4) and valid.shape == (2, 0)


def _hf_costs(logits, boxes, labels, tboxes, class_loss):
    """Independent per-image reference costs with transformers' box utilities and formula."""
    if class_loss == "focal":
        p = logits.sigmoid()
        neg = (1 - 0.25) * (p ** 2.0) * (-(1 - p + 1e-8).log())
        pos = 0.25 * ((1 - p) ** 2.0) * (-(p + 1e-8).log())
        cls = pos[:, labels] - neg[:, labels]
    else:
        cls = -logits.softmax(-1)[:, labels]
    l1 = torch.cdist(boxes, tboxes, p=1)
    giou = -hf_od.generalized_box_iou(hf_od.center_to_corners_format(boxes), hf_od.center_to_corners_format(tboxes))
    return 5 * l1 + 2 * cls + 2 * giou


@pytest.mark.parametrize("class_loss,C", [("focal", 6), ("focal", 20), ("ce", 6)])
def test_matcher_equals_transformers(class_loss, C):
    counts = [4, 0, 9, 1, 12]  # T = 12: C = 6 and C = 20 take the two orders of the focal-cost gather
    logits, boxes, targets = make_batch(counts, L=3, N=15, C=C, g=gen(8), extra_class=class_loss == "ce")
    ours = HungarianMatcher(2, 5, 2, class_loss=class_loss)(logits, boxes, targets)
    assert ours.shape == (3, 5, 15)
    if class_loss == "focal":
        hf = hf_ddetr.DeformableDetrHungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    else:
        hf = hf_od.HungarianMatcher(class_cost=2, bbox_cost=5, giou_cost=2)
    labels, tboxes, valid = pad_targets(targets)
    ours_cost = HungarianMatcher(2, 5, 2, class_loss=class_loss).cost_matrix(logits, boxes, labels, tboxes)
    for l in range(3):
        ref = to_dense(hf({"logits": logits[l], "pred_boxes": boxes[l]}, targets), 5, 15)
        for b, t in enumerate(targets):
            c = _hf_costs(logits[l, b], boxes[l, b], t["class_labels"], t["boxes"], class_loss)
            torch.testing.assert_close(ours_cost[l, b, :, : counts[b]], c, rtol=1e-6, atol=1e-6)
            check_valid_assignment(ours[l, b], 15, counts[b])
            assert total_cost(c, ours[l, b]) == pytest.approx(total_cost(c, ref[b]), rel=1e-6, abs=1e-6)
        assert torch.equal(ours[l], ref)  # continuous random costs: no ties, unique optimum


def test_matcher_all_targets_empty():
    logits, boxes, targets = make_batch([0, 0], L=2, N=5, g=gen(9))
    out = HungarianMatcher()(logits, boxes, targets)
    assert out.shape == (2, 2, 5) and (out == -1).all()


def test_matcher_survives_non_finite_predictions():
    logits, boxes, targets = make_batch([3, 2], L=2, N=6, g=gen(10))
    logits[0, 0, 0] = float("nan")
    boxes[1, 1, 2] = float("inf")
    out = HungarianMatcher()(logits, boxes, targets)
    for l in range(2):
        for b, n in enumerate([3, 2]):
            check_valid_assignment(out[l, b], 6, n)


# --------------------------------------------------------------------------------------------------- criterion
def _hf_deformable_loss(logits, boxes, targets, C):
    cfg = types.SimpleNamespace(class_cost=2, bbox_cost=5, giou_cost=2, num_labels=C, focal_alpha=0.25,
                                auxiliary_loss=True, decoder_layers=logits.shape[0], bbox_loss_coefficient=5,
                                giou_loss_coefficient=2)
    loss, loss_dict, _ = hf_ddetr.DeformableDetrForObjectDetectionLoss(
        logits[-1], targets, "cpu", boxes[-1], cfg, outputs_class=logits, outputs_coord=boxes)
    return loss, loss_dict


def _hf_stage_keys(L):
    return [f"_{l}" for l in range(L - 1)] + [""]


def test_criterion_equals_transformers_deformable_detr():
    L, C = 4, 7
    counts = [5, 0, 11, 2]
    logits, boxes, targets = make_batch(counts, L=L, N=20, C=C, g=gen(11))
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    ref_loss, ref = _hf_deformable_loss(logits, boxes, targets, C)
    # transformers weighs loss_ce by 1 (Deformable DETR's paper/code use 2): compare with class_weight=1 ...
    out = SetCriterion(C, class_weight=1)(logits, boxes, targets)
    torch.testing.assert_close(out.loss, ref_loss, rtol=1e-5, atol=1e-6)
    for l, sfx in enumerate(_hf_stage_keys(L)):
        torch.testing.assert_close(out.per_stage["cls"][l], ref["loss_ce" + sfx].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["bbox"][l], 5 * ref["loss_bbox" + sfx].detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["giou"][l], 2 * ref["loss_giou" + sfx].detach(), rtol=1e-5, atol=1e-6)
    # ... and gradients agree too
    g_ours = torch.autograd.grad(out.loss, (logits, boxes))
    g_ref = torch.autograd.grad(ref_loss, (logits, boxes))
    for a, b in zip(g_ours, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-7)
    # default weights (class 2): the classification part doubles, the rest is unchanged
    out2 = SetCriterion(C)(logits, boxes, targets)
    torch.testing.assert_close(out2.loss_dict["cls"], 2 * out.loss_dict["cls"], rtol=1e-6, atol=0)
    torch.testing.assert_close(out2.loss_dict["bbox"], out.loss_dict["bbox"])
    assert not out2.loss_dict["cls"].requires_grad and out2.loss.requires_grad


def test_criterion_ce_equals_transformers_detr():
    L, C = 3, 5
    counts = [3, 7, 0]
    logits, boxes, targets = make_batch(counts, L=L, N=10, C=C, g=gen(12), extra_class=True)
    crit = SetCriterion(C, class_cost=1, bbox_cost=5, giou_cost=2, class_weight=1, class_loss="ce", eos_coef=0.1)
    out = crit(logits, boxes, targets)
    hf = hf_od.ImageLoss(hf_od.HungarianMatcher(class_cost=1, bbox_cost=5, giou_cost=2), C, 0.1, ["labels", "boxes"])
    aux = [{"logits": logits[l], "pred_boxes": boxes[l]} for l in range(L - 1)]
    ref = hf({"logits": logits[-1], "pred_boxes": boxes[-1], "auxiliary_outputs": aux}, targets)
    total = 0
    for l, sfx in enumerate(_hf_stage_keys(L)):
        torch.testing.assert_close(out.per_stage["cls"][l], ref["loss_ce" + sfx], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["bbox"][l], 5 * ref["loss_bbox" + sfx], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["giou"][l], 2 * ref["loss_giou" + sfx], rtol=1e-5, atol=1e-6)
        total = total + ref["loss_ce" + sfx] + 5 * ref["loss_bbox" + sfx] + 2 * ref["loss_giou" + sfx]
    torch.testing.assert_close(out.loss, total, rtol=1e-5, atol=1e-6)


def test_criterion_uses_given_assignments_verbatim():
    L, C, N = 2, 4, 9
    counts = [3, 0, 4]
    logits, boxes, targets = make_batch(counts, L=L, N=N, C=C, g=gen(13))
    g = gen(14)
    given = torch.full((L, 3, N), -1, dtype=torch.long)
    for b, n in enumerate(counts):
        if n:
            given[:, b, :4] = torch.randint(0, n, (L, 4), generator=g)  # one-to-many allowed
    crit = SetCriterion(C, class_weight=1, bbox_weight=1, giou_weight=1)
    out = crit(logits, boxes, targets, assignments=given)
    assert torch.equal(out.assignments, given)
    matched = crit(logits, boxes, targets)
    assert not torch.equal(matched.assignments, given)
    # reference: transformers' per-term losses with the same (query, target) pairs
    hf = hf_ddetr.DeformableDetrImageLoss(None, C, 0.25, ["labels", "boxes"])
    for l in range(L):
        idx = to_indices(given[l])
        outs = {"logits": logits[l], "pred_boxes": boxes[l]}
        lab = hf.loss_labels(outs, targets, idx, 7.0)["loss_ce"]
        bx = hf.loss_boxes(outs, targets, idx, 7.0)
        torch.testing.assert_close(out.per_stage["cls"][l], lab, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["bbox"][l], bx["loss_bbox"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out.per_stage["giou"][l], bx["loss_giou"], rtol=1e-5, atol=1e-6)
    assert out.num_boxes == 7.0
    with pytest.raises(ValueError):
        bad = given.clone()
        bad[0, 1, 0] = 0  # image 1 has no targets
        crit(logits, boxes, targets, assignments=bad)
    with pytest.raises(ValueError):
        crit(logits, boxes, targets, assignments=given[:, :2])


def test_criterion_gradients_and_empty_targets():
    L, C = 3, 4
    logits, boxes, targets = make_batch([2, 0, 5], L=L, N=8, C=C, g=gen(15))
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    out = SetCriterion(C)(logits, boxes, targets)
    out.loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.isfinite(boxes.grad).all() and boxes.grad.abs().sum() > 0
    assert boxes.grad[:, 1].abs().sum() == 0  # image without targets: no box supervision
    # whole batch without targets: background-only focal loss, zero box losses, graph still reaches boxes
    logits, boxes, targets = make_batch([0, 0], L=L, N=8, C=C, g=gen(16))
    logits.requires_grad_(True)
    boxes.requires_grad_(True)
    out = SetCriterion(C)(logits, boxes, targets)
    assert out.num_boxes == 1.0 and (out.assignments == -1).all()
    assert out.loss_dict["bbox"].item() == 0 and out.loss_dict["giou"].item() == 0 and out.loss_dict["cls"] > 0
    out.loss.backward()
    assert logits.grad.abs().sum() > 0 and boxes.grad is not None and (boxes.grad == 0).all()


def test_criterion_aux_loss_off_and_from_config():
    L, C = 3, 4
    logits, boxes, targets = make_batch([3, 1], L=L, N=8, C=C, g=gen(17))
    full = SetCriterion(C)(logits, boxes, targets)
    cfg = LossConfig(aux_loss=False, class_weight=3.0)
    crit = SetCriterion.from_config(cfg, C, "focal")
    assert crit.weights == {"cls": 3.0, "bbox": 5.0, "giou": 2.0} and not crit.aux_loss
    last = crit(logits, boxes, targets)
    assert last.assignments.shape == (1, 2, 8)
    assert torch.equal(last.assignments[0], full.assignments[-1])
    expected = 1.5 * full.per_stage["cls"][-1] + full.per_stage["bbox"][-1] + full.per_stage["giou"][-1]
    torch.testing.assert_close(last.loss, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        crit(logits[..., :3], boxes, targets)


def test_criterion_bf16_inputs():
    logits, boxes, targets = make_batch([2, 3], L=2, N=6, C=4, g=gen(18))
    ref = SetCriterion(4)(logits, boxes, targets)
    out = SetCriterion(4)(logits.bfloat16(), boxes.bfloat16(), targets)
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, ref.loss, rtol=0.05, atol=0.05)


def test_denoising_assignments():
    valid = torch.tensor([[True, True, False], [True, False, False]])
    a = denoising_assignments(valid, num_groups=2, num_stages=3, with_negatives=True)
    assert a.shape == (3, 2, 12)
    assert a[0, 0].tolist() == [0, 1, -1, -1, -1, -1, 0, 1, -1, -1, -1, -1]
    assert a[2, 1].tolist() == [0, -1, -1, -1, -1, -1, 0, -1, -1, -1, -1, -1]


# ----------------------------------------------------------------------------------------------- distributed
def _reduce_worker(rank: int, world: int, init_file: str, result_dir: str):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        value = reduce_num_boxes([6.0, 2.0][rank])
        torch.save(torch.tensor(value), os.path.join(result_dir, f"r{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_reduce_num_boxes_single_process():
    assert reduce_num_boxes(5.0) == 5.0
    assert reduce_num_boxes(0.0) == 1.0


@pytest.mark.slow  # two processes
def test_reduce_num_boxes_two_process_gloo():
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        torch.multiprocessing.spawn(_reduce_worker, args=(2, init_file, tmp), nprocs=2, join=True)
        got = [torch.load(os.path.join(tmp, f"r{r}.pt")).item() for r in range(2)]
    assert got == [4.0, 4.0]  # mean of 6 and 2 (transformers under accelerate would give 2.0)
