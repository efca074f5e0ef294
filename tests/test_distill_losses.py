"""DETRDistill losses on plain tensors (no models): stage mapping, logits, feature, query prior, contrastive,
baselines."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from detrdistill.distillation import (ContrastiveDistillLoss, FeatureDistillLoss, FitNetLoss,
                                      HungarianLogitsDistillLoss, LogitKDLoss, QueryPriorLoss,
                                      level_pairs_by_resolution, map_stages, match_student_to_teacher,
                                      quality_scores, target_aware_mask)
from detrdistill.models.outputs import GroupOutput
from detrdistill.ops.boxes import cxcywh_to_xyxy, generalized_box_iou_pairs
from detrdistill.ops.criterion import SetCriterion


# ----------------------------------------------------------------------------------------------- helpers
def rand_boxes(*shape, g=None):
    """Normalised cxcywh boxes that lie inside the image (so clipping the teacher's changes nothing)."""
    c = torch.rand(*shape, 2, generator=g) * 0.4 + 0.3
    wh = torch.rand(*shape, 2, generator=g) * 0.25 + 0.05
    return torch.cat([c, wh], -1)


def entropy_floor(teacher_logits, stage_map=None):
    """Σ over student stages of the mean (over matched pairs) of Σ_c H(p_c): the minimum of the soft BCE."""
    p = teacher_logits.sigmoid()
    h = -(p * p.log() + (1 - p) * (1 - p).log()).sum(-1)  # [L_T, B, N]
    if stage_map is not None:
        h = h[stage_map]
    return h.mean((1, 2)).sum()


def brute_force_cost(zs, bs, zt, bt):
    """Independent matching cost [N_S, N_T] for one (stage, image)."""
    bt = cxcywh_to_xyxy(bt).clamp(0, 1)
    ns, nt = zs.shape[0], zt.shape[0]
    cost = torch.empty(ns, nt, dtype=torch.float64)
    for i in range(ns):
        for j in range(nt):
            cls = F.binary_cross_entropy_with_logits(zs[i], zt[j].sigmoid(), reduction="sum")
            tb = torch.stack([(bt[j, 0] + bt[j, 2]) / 2, (bt[j, 1] + bt[j, 3]) / 2, bt[j, 2] - bt[j, 0],
                              bt[j, 3] - bt[j, 1]])
            l1 = (bs[i] - tb).abs().sum()
            giou = generalized_box_iou_pairs(cxcywh_to_xyxy(bs[i]), bt[j])
            cost[i, j] = float(cls + 5 * l1 - 2 * giou)
    return cost


def best_assignment_cost(cost):
    """Minimum over all injective maps of the smaller side into the larger side."""
    ns, nt = cost.shape
    best = float("inf")
    if ns <= nt:
        for cols in itertools.permutations(range(nt), ns):
            best = min(best, sum(cost[i, c].item() for i, c in enumerate(cols)))
    else:
        for rows in itertools.permutations(range(ns), nt):
            best = min(best, sum(cost[r, j].item() for j, r in enumerate(rows)))
    return best


# ----------------------------------------------------------------------------------------------- stage mapping
def test_stage_mapping_examples():
    assert map_stages(6, 6) == [0, 1, 2, 3, 4, 5]
    assert map_stages(3, 6) == [1, 3, 5]
    assert map_stages(2, 6) == [2, 5]
    assert map_stages(4, 6) == [1, 2, 4, 5]
    assert map_stages(6, 3) == [0, 0, 1, 1, 2, 2]
    assert map_stages(1, 6) == [5]
    assert map_stages(3, 6, "last") == [3, 4, 5]
    assert map_stages(6, 3, "last") == [0, 0, 0, 0, 1, 2]
    assert map_stages(3, 6, "final") == [5, 5, 5]
    for s in range(1, 9):
        for t in range(1, 9):
            for mode in ("uniform", "last", "final"):
                m = map_stages(s, t, mode)
                assert len(m) == s and m[-1] == t - 1 and m == sorted(m) and 0 <= m[0]
    with pytest.raises(ValueError):
        map_stages(3, 6, "nope")
    with pytest.raises(ValueError):
        map_stages(0, 6)


# ----------------------------------------------------------------------------------------------- logits
def test_logits_equal_outputs_hit_the_entropy_floor_and_grow_with_divergence():
    g = torch.Generator().manual_seed(0)
    L, B, N, C = 3, 2, 8, 5
    zt = torch.randn(L, B, N, C, generator=g) * 2
    bt = rand_boxes(L, B, N, g=g)
    loss = HungarianLogitsDistillLoss()
    out = loss(zt.clone(), bt.clone(), zt, bt)
    floor = entropy_floor(zt)
    assert torch.allclose(out.losses["logits_cls"], floor, atol=1e-4)
    assert out.losses["logits_bbox"].abs() < 1e-5 and out.losses["logits_giou"].abs() < 1e-5
    assert (out.matching == torch.arange(N)).all()  # identity matching at equality
    # the floor is the minimum: any perturbation of the student logits raises the class term
    for _ in range(5):
        o = loss(zt + 0.3 * torch.randn(L, B, N, C, generator=g), bt, zt, bt)
        assert o.losses["logits_cls"] > floor + 1e-4
    # monotone in the perturbation scale (class and boxes)
    dz, db = torch.randn(L, B, N, C, generator=g), torch.randn(L, B, N, 4, generator=g)
    prev_c = prev_b = -1.0
    for s in (0.0, 0.05, 0.2, 0.5, 1.0):
        o = loss(zt + s * dz, (bt + 0.05 * s * db).clamp(0.01, 0.99), zt, bt)
        c, b = o.losses["logits_cls"].item(), (o.losses["logits_bbox"] + o.losses["logits_giou"]).item()
        assert c > prev_c and b >= prev_b
        prev_c, prev_b = c, b
    assert prev_b > 0.01


@pytest.mark.parametrize("ns,nt", [(4, 4), (3, 5), (5, 3), (2, 4)])
def test_logits_matching_equals_brute_force(ns, nt):
    g = torch.Generator().manual_seed(ns * 10 + nt)
    L, B, C = 2, 2, 3
    zs, zt = torch.randn(L, B, ns, C, generator=g) * 2, torch.randn(L, B, nt, C, generator=g) * 2
    bs = rand_boxes(L, B, ns, g=g)
    bt = rand_boxes(L, B, nt, g=g)
    bt[0, 0, 0] = torch.tensor([0.05, 0.9, 0.3, 0.4])  # partly outside: exercises the clipping
    out = HungarianLogitsDistillLoss()(zs, bs, zt, bt)
    m = min(ns, nt)
    total = 0.0
    for l in range(L):
        for b in range(B):
            cost = brute_force_cost(zs[l, b].double(), bs[l, b].double(), zt[l, b].double(), bt[l, b].double())
            match = out.matching[l, b]
            got = sum(cost[i, j].item() for i, j in enumerate(match.tolist()) if j >= 0)
            assert (match >= 0).sum() == m and len(set(match[match >= 0].tolist())) == m
            best = best_assignment_cost(cost)
            assert got == pytest.approx(best, abs=1e-4)
            total += (best + 2 * m) / m  # loss = (cls + 5 L1 + 2 (1 - GIoU)) / matched
    summed = sum(v.item() for v in out.losses.values())
    assert summed == pytest.approx(total / B, rel=1e-4)  # per stage: mean over the B*m pairs


def test_logits_invariant_to_student_query_permutation():
    g = torch.Generator().manual_seed(1)
    L, B, N, C = 2, 2, 7, 4
    zs, zt = torch.randn(L, B, N, C, generator=g), torch.randn(L, B, N, C, generator=g)
    bs, bt = rand_boxes(L, B, N, g=g), rand_boxes(L, B, N, g=g)
    loss = HungarianLogitsDistillLoss()
    a = loss(zs, bs, zt, bt)
    perm = torch.randperm(N, generator=g)
    b = loss(zs[:, :, perm], bs[:, :, perm], zt, bt)
    for k in a.losses:
        assert torch.allclose(a.losses[k], b.losses[k], atol=1e-5), k
    assert (b.matching == a.matching[:, :, perm]).all()


@pytest.mark.parametrize("ns,nt", [(9, 5), (4, 8)])
def test_logits_unequal_query_counts(ns, nt):
    g = torch.Generator().manual_seed(2)
    L, B, C = 2, 2, 3
    zs = torch.randn(L, B, ns, C, generator=g).requires_grad_()
    bs = rand_boxes(L, B, ns, g=g).requires_grad_()
    zt, bt = torch.randn(L, B, nt, C, generator=g), rand_boxes(L, B, nt, g=g)
    out = HungarianLogitsDistillLoss()(zs, bs, zt, bt)
    matched = out.matching >= 0
    assert (matched.sum(-1) == min(ns, nt)).all()
    assert out.matching.max() < nt
    for l, b in itertools.product(range(L), range(B)):
        idx = out.matching[l, b][matched[l, b]]
        assert len(set(idx.tolist())) == idx.numel()  # one-to-one
    total = sum(out.losses.values())
    assert torch.isfinite(total)
    total.backward()
    # unmatched student queries get no target: zero gradient on their logits and boxes
    unmatched = ~matched
    assert unmatched.any() == (ns > nt)
    assert (zs.grad[unmatched] == 0).all() and (bs.grad[unmatched] == 0).all()
    assert (zs.grad[matched].abs().sum(-1) > 0).all()


def test_logits_softmax_families():
    g = torch.Generator().manual_seed(3)
    L, B, N, C = 2, 2, 6, 4
    zt = torch.randn(L, B, N, C + 1, generator=g) * 2
    bt = rand_boxes(L, B, N, g=g)
    loss = HungarianLogitsDistillLoss()
    out = loss(zt.clone(), bt, zt, bt, student_activation="softmax", teacher_activation="softmax")
    p = zt.softmax(-1)
    floor = -(p * p.log()).sum(-1).mean((1, 2)).sum()  # soft CE over C + 1: teacher entropy
    assert torch.allclose(out.losses["logits_cls"], floor, atol=1e-4)
    worse = loss(zt + 0.5 * torch.randn(zt.shape, generator=g), bt, zt, bt,
                 student_activation="softmax", teacher_activation="softmax")
    assert worse.losses["logits_cls"] > floor
    # mixed: sigmoid teacher (C logits) -> softmax student (C + 1), and the reverse
    zs = torch.randn(L, B, N, C + 1, generator=g).requires_grad_()
    z_sig = torch.randn(L, B, N, C, generator=g)
    o1 = loss(zs, bt, z_sig, bt, student_activation="softmax", teacher_activation="sigmoid")
    o2 = loss(z_sig.clone().requires_grad_(), bt, zt, bt, student_activation="sigmoid", teacher_activation="softmax")
    for o in (o1, o2):
        assert all(torch.isfinite(v) for v in o.losses.values())
    o1.losses["logits_cls"].backward()
    assert zs.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        loss(torch.randn(L, B, N, C + 2), bt, zt, bt, student_activation="softmax", teacher_activation="softmax")


def test_logits_stage_mapping_uses_the_mapped_teacher_stage():
    g = torch.Generator().manual_seed(4)
    L_T, L_S, B, N, C = 4, 2, 2, 6, 3
    zt, bt = torch.randn(L_T, B, N, C, generator=g) * 2, rand_boxes(L_T, B, N, g=g)
    stage_map = map_stages(L_S, L_T)  # [1, 3]
    out = HungarianLogitsDistillLoss()(zt[stage_map].clone(), bt[stage_map].clone(), zt, bt, stage_map)
    assert out.teacher_stages == [1, 3]
    assert torch.allclose(out.losses["logits_cls"], entropy_floor(zt, stage_map), atol=1e-4)
    assert out.losses["logits_bbox"] < 1e-5
    wrong = HungarianLogitsDistillLoss()(zt[[0, 2]], bt[[0, 2]], zt, bt, stage_map)
    assert wrong.losses["logits_bbox"] > 0.01


def test_pos_neg_variant():
    g = torch.Generator().manual_seed(5)
    L, B, N, C = 2, 2, 8, 3
    zs, zt = torch.randn(L, B, N, C, generator=g), torch.randn(L, B, N, C, generator=g) * 2
    bs, bt = rand_boxes(L, B, N, g=g), rand_boxes(L, B, N, g=g)
    targets = [{"class_labels": torch.tensor([0, 2]), "boxes": rand_boxes(2, g=g)},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assign = torch.full((L, B, N), -1)
    assign[:, 0, 1], assign[:, 0, 4] = 0, 1  # image 0: teacher queries 1 and 4 are positives
    a = HungarianLogitsDistillLoss(variant="all")(zs, bs, zt, bt)
    pn_loss = HungarianLogitsDistillLoss(variant="pos_neg", pos_threshold=0.5)
    pn = pn_loss(zs, bs, zt, bt, teacher_assignments=assign, targets=targets)
    assert set(pn.losses) == {"logits_cls", "logits_bbox", "logits_giou", "logits_neg"}
    assert all(torch.isfinite(v) for v in pn.losses.values())
    assert not torch.allclose(a.losses["logits_bbox"], pn.losses["logits_bbox"])
    # positives: image 0 by assignment, image 1 (no GT) by score threshold
    pos_t = pn_loss.teacher_positives(zt, "sigmoid", assign, targets)
    assert pos_t[:, 0].sum(-1).tolist() == [2, 2]
    assert (pos_t[:, 1] == (zt[:, 1].sigmoid().amax(-1) >= 0.5)).all()
    # every student query is matched (N_S = N_T); positive pairs point at teacher positives
    assert (pn.matching >= 0).all()
    tgt_pos = pos_t.gather(2, pn.matching)
    assert (tgt_pos == pn.positive).all()
    # negatives carry no box term: moving the teacher negatives' boxes leaves the box losses unchanged
    bt2 = bt.clone()
    bt2[~pos_t] = rand_boxes(int((~pos_t).sum()), g=g)
    pn2 = pn_loss(zs, bs, zt, bt2, teacher_assignments=assign, targets=targets)
    assert torch.allclose(pn.losses["logits_bbox"], pn2.losses["logits_bbox"])
    # at equality the box terms vanish too
    eq = pn_loss(zt.clone(), bt.clone(), zt, bt, teacher_assignments=assign, targets=targets)
    assert eq.losses["logits_bbox"] < 1e-5 and eq.losses["logits_giou"] < 1e-5
    # neg_weight scales only the negative term
    pn0 = HungarianLogitsDistillLoss(variant="pos_neg", neg_weight=0.0)(zs, bs, zt, bt, teacher_assignments=assign,
                                                                       targets=targets)
    assert pn0.losses["logits_neg"] == 0 and torch.allclose(pn0.losses["logits_cls"], pn.losses["logits_cls"])


def test_match_student_to_teacher_matches_loss_matching():
    g = torch.Generator().manual_seed(6)
    zs, zt = torch.randn(2, 2, 5, 3, generator=g), torch.randn(2, 2, 5, 3, generator=g)
    bs, bt = rand_boxes(2, 2, 5, g=g), rand_boxes(2, 2, 5, g=g)
    m = match_student_to_teacher(zs, bs, zt, bt)
    assert (m == HungarianLogitsDistillLoss()(zs, bs, zt, bt).matching).all()


# ----------------------------------------------------------------------------------------------- feature
def test_quality_scores():
    logits = torch.full((2, 3, 2), -6.0)
    logits[:, 1, 0] = 3.0   # query 1 / class 0: best
    logits[:, 2, 1] = 1.0   # query 2 / class 1: second
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.05, 0.5, 0.2, 0.2], [0.7, 0.7, 0.2, 0.2]]).repeat(2, 1, 1)
    # GT of image 0: x in [0, 0.15] (query 1's box spans [-0.05, 0.15] unclipped -> IoU 0.75) and query 2's box
    targets = [{"class_labels": torch.tensor([0, 1]),
                "boxes": torch.tensor([[0.075, 0.5, 0.15, 0.2], [0.7, 0.7, 0.2, 0.2]])},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    q, idx = quality_scores(logits, boxes, targets, top_k=2)
    assert idx.tolist() == [[1, 2], [1, 2]]
    s = torch.tensor([3.0, 1.0]).sigmoid()
    assert torch.allclose(q[0], s * torch.tensor([0.75, 1.0]), atol=1e-5)   # unclipped IoU, not 1.0
    assert torch.allclose(q[1], s, atol=1e-6)                               # no GT: score alone
    # top_k larger than N * C is capped; a leading stage dim is carried
    q3, idx3 = quality_scores(torch.stack([logits, logits]), torch.stack([boxes, boxes]), targets, top_k=100)
    assert q3.shape == (2, 2, 6) and torch.allclose(q3[:, :, :2], q.expand(2, -1, -1), atol=1e-6)


def _synthetic_scene(d=8, H=8, W=8):
    """Teacher query 0 is confident and its embedding e0 = unit vector 0; the features equal 3 * e0 on the object
    (rows/cols 1..2), and are orthogonal to e0 elsewhere."""
    g = torch.Generator().manual_seed(7)
    B, N, C = 2, 4, 3
    logits = torch.full((B, N, C), -8.0)
    logits[:, 0, 0] = 4.0
    boxes = torch.tensor([0.25, 0.25, 0.25, 0.25]).repeat(B, N, 1)
    boxes[:, 1:] = torch.tensor([0.7, 0.7, 0.2, 0.2])
    emb = torch.randn(B, N, d, generator=g)
    emb[:, 0] = 0
    emb[:, 0, 0] = 1.0
    feat = torch.randn(B, d, H, W, generator=g)
    feat[:, 0] = 0                          # background orthogonal to e0
    feat[:, :, 1:3, 1:3] = 0
    feat[:, 0, 1:3, 1:3] = 3.0              # object: aligned with e0
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[1, :, 5:] = False                 # image 1: right part is padding
    feat[1, 0, :, 6] = 50.0                 # a huge response inside the padding must not set the max
    feat[1, 1:, :, 6] = 0
    targets = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.25, 0.25, 0.25, 0.25]])}] * B
    return logits, boxes, emb, feat, valid, targets


def test_target_aware_mask_range_padding_and_peak():
    logits, boxes, emb, feat, valid, targets = _synthetic_scene()
    q, idx = quality_scores(logits, boxes, targets, top_k=5)
    (mask,) = target_aware_mask(emb, [feat], q, idx, [valid], floor=0.01)
    assert mask.shape == (2, 8, 8)
    assert (mask[valid] > 0).all() and (mask[valid] <= 1 + 1e-6).all()
    assert (mask[~valid] == 0).all()
    for b in range(2):
        assert mask[b].max() == pytest.approx(1.0)
        r, c = divmod(int(mask[b].argmax()), 8)
        assert 1 <= r <= 2 and 1 <= c <= 2           # peaks on the object
        bg = mask[b][valid[b]].clone()
        assert bg.min() == pytest.approx(0.01, rel=0.05)  # background sits at the floor (relative to the peak)
    # without masks the padding responds (official behaviour) and sets the max of image 1
    (nomask,) = target_aware_mask(emb, [feat], q, idx, None)
    assert nomask[1, :, 6].max() == pytest.approx(1.0) and mask[1, 1, 1] == pytest.approx(1.0)
    # stage dim carried: two identical stages give two identical masks
    q2, idx2 = quality_scores(torch.stack([logits] * 2), torch.stack([boxes] * 2), targets, top_k=5)
    (m2,) = target_aware_mask(torch.stack([emb] * 2), [feat], q2, idx2, [valid])
    assert m2.shape == (2, 2, 8, 8) and torch.allclose(m2[0], mask) and torch.allclose(m2[1], mask)


def test_feature_loss_zero_at_equality_grows_and_ignores_padding():
    g = torch.Generator().manual_seed(8)
    B, d = 2, 6
    tf = [torch.randn(B, d, 8, 8, generator=g), torch.randn(B, d, 4, 4, generator=g)]
    valid = [torch.ones(B, 8, 8, dtype=torch.bool), torch.ones(B, 4, 4, dtype=torch.bool)]
    valid[0][1, 5:], valid[1][1, 3:] = False, False
    masks = [torch.rand(3, B, 8, 8, generator=g) * v for v in valid[:1]] + [torch.rand(3, B, 4, 4, generator=g)]
    loss = FeatureDistillLoss([d, d], [d, d])
    assert all(isinstance(a, torch.nn.Identity) for a in loss.adapters)
    assert loss([t.clone() for t in tf], tf, masks, valid) == 0
    dirs = [torch.randn(t.shape, generator=g) for t in tf]
    prev = 0.0
    for s in (0.1, 0.3, 1.0):
        v = loss([t + s * e for t, e in zip(tf, dirs)], tf, masks, valid).item()
        assert v > prev
        prev = v
    # changing the student only on padded positions changes nothing
    sf = [t + 0.5 * e for t, e in zip(tf, dirs)]
    sf2 = [x.clone() for x in sf]
    sf2[0][1, :, 5:] += 100.0
    assert torch.allclose(loss(sf, tf, masks, valid), loss(sf2, tf, masks, valid))
    # the loss is the sum over stages of Σ_levels mean over real pixels and channels of (Ψ (F_T - F_S))²
    manual = 0.0
    for m, t, x, v in zip(masks, tf, sf, valid):
        for st in range(3):
            manual += ((m[st][:, None] * v[:, None] * (t - x)) ** 2).sum() / (v.sum() * d)
    assert torch.allclose(loss(sf, tf, masks, valid), manual)


def test_feature_adapters_resize_and_level_pairs():
    g = torch.Generator().manual_seed(9)
    loss = FeatureDistillLoss([4, 8], [8, 8], weight=2.0)
    assert isinstance(loss.adapters[0], torch.nn.Conv2d) and isinstance(loss.adapters[1], torch.nn.Identity)
    sf = [torch.randn(2, 4, 6, 6, generator=g, requires_grad=True), torch.randn(2, 8, 3, 3, generator=g)]
    tf = [torch.randn(2, 8, 8, 8, generator=g), torch.randn(2, 8, 4, 4, generator=g)]  # sizes differ: resized
    val = loss(sf, tf, None, None)
    assert torch.isfinite(val) and val > 0
    val.backward()
    assert sf[0].grad.abs().sum() > 0 and loss.adapters[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="level_pairs"):
        FeatureDistillLoss([8, 8, 8], [8, 8, 8, 8])
    pairs = level_pairs_by_resolution([(8, 8), (4, 4), (2, 2)], [(16, 16), (8, 8), (4, 4), (2, 2)])
    assert pairs == [(0, 1), (1, 2), (2, 3)]
    with pytest.raises(ValueError):
        level_pairs_by_resolution([(3, 3)], [(8, 8)])
    lp = FeatureDistillLoss([8, 8, 8], [8, 8, 8, 8], level_pairs=pairs)
    tf4 = [torch.randn(1, 8, s, s, generator=g) for s in (16, 8, 4, 2)]
    assert lp(tf4[1:], tf4, None, None) == 0  # each student level equals its paired teacher level


# ----------------------------------------------------------------------------------------------- query prior
def test_query_prior_uses_teacher_assignments_verbatim():
    g = torch.Generator().manual_seed(10)
    L_T, L_S, B, N, C = 4, 2, 2, 6, 3
    targets = [{"class_labels": torch.tensor([1, 2]), "boxes": rand_boxes(2, g=g)},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}]
    assign = torch.full((L_T, B, N), -1)
    for l in range(L_T):
        assign[l, 0, l] = 0
        assign[l, 0, l + 1] = 1
    crit = SetCriterion(C)
    group = GroupOutput(torch.randn(L_S, B, N, C, generator=g, requires_grad=True), rand_boxes(L_S, B, N, g=g),
                        torch.randn(L_S, B, N, 8, generator=g))
    stage_map = map_stages(L_S, L_T)
    out = QueryPriorLoss(weight=0.5)(group, assign, targets, stage_map, crit)
    assert (out.assignments == assign[stage_map]).all()
    ref = crit(group.logits, group.boxes, targets, assignments=assign[stage_map])
    assert torch.allclose(out.loss, 0.5 * ref.loss)
    assert set(out.loss_dict) == {"query_prior_cls", "query_prior_bbox", "query_prior_giou"}
    assert torch.allclose(sum(out.loss_dict.values()), out.loss.detach())
    out.loss.backward()
    assert group.logits.grad[:, 1].abs().sum() > 0  # empty-GT image: all queries pushed to background
    # a group that predicts the teacher's targets perfectly has (almost) no loss
    logits = torch.full((L_S, B, N, C), -20.0)
    boxes = rand_boxes(L_S, B, N, g=g)
    for l, t in enumerate(stage_map):
        for n in range(N):
            j = int(assign[t, 0, n])
            if j >= 0:
                logits[l, 0, n, targets[0]["class_labels"][j]] = 20.0
                boxes[l, 0, n] = targets[0]["boxes"][j]
    perfect = QueryPriorLoss()(GroupOutput(logits, boxes, group.embeddings), assign, targets, stage_map, crit)
    assert perfect.loss < 1e-4 < out.loss
    with pytest.raises(ValueError):
        QueryPriorLoss()(group, assign[:, :, :3], targets, stage_map, crit)


# ----------------------------------------------------------------------------------------------- contrastive
def test_contrastive_matched_pairs_only():
    g = torch.Generator().manual_seed(11)
    L, B, ns, nt, ds, dt = 2, 2, 7, 5, 16, 24
    loss = ContrastiveDistillLoss(ds, dt, proj_dim=32)
    se = torch.randn(L, B, ns, ds, generator=g, requires_grad=True)
    te = torch.randn(L, B, nt, dt, generator=g)
    zs, zt = torch.randn(L, B, ns, 3, generator=g), torch.randn(L, B, nt, 3, generator=g)
    m = match_student_to_teacher(zs, rand_boxes(L, B, ns, g=g), zt, rand_boxes(L, B, nt, g=g))
    val = loss(se, te, m, [0, 1])
    assert torch.isfinite(val) and val > 0
    val.backward()
    assert (se.grad[m < 0] == 0).all() and (se.grad[m >= 0].abs().sum(-1) > 0).all()
    assert loss.student_head[0].weight.grad is not None and loss.teacher_head[0].weight.grad is not None
    # a stage with fewer than 2 matched pairs contributes nothing
    none = torch.full_like(m, -1)
    none[:, 0, 0] = 0
    assert loss(se, te, none, [0, 1]) == 0
    # trained heads separate the pairs: a few steps on fixed data lower the loss
    opt = torch.optim.Adam(loss.parameters(), lr=1e-2)
    first = None
    for _ in range(30):
        opt.zero_grad()
        v = loss(se.detach(), te, m, [0, 1])
        first = v.item() if first is None else first
        v.backward()
        opt.step()
    assert v.item() < first


# ----------------------------------------------------------------------------------------------- baselines
def test_fitnet_zero_at_equality_and_positive_otherwise():
    g = torch.Generator().manual_seed(12)
    tf = [torch.randn(2, 8, 6, 6, generator=g)]
    valid = [torch.ones(2, 6, 6, dtype=torch.bool)]
    fit = FitNetLoss([8], [8])
    assert fit([tf[0].clone()], tf, valid) == 0
    sf = [tf[0] + 0.1 * torch.randn(tf[0].shape, generator=g)]
    assert torch.allclose(fit(sf, tf, valid), ((sf[0] - tf[0]) ** 2).mean())


def test_logit_kd_zero_at_equality_and_monotone():
    g = torch.Generator().manual_seed(13)
    L, B, N, C = 2, 2, 6, 4
    zt, bt = torch.randn(L, B, N, C, generator=g) * 2, rand_boxes(L, B, N, g=g)
    for tau in (1.0, 2.0):
        kd = LogitKDLoss(temperature=tau)
        assert kd(zt.clone(), bt.clone(), zt, bt).abs() < 1e-6
        d = torch.randn(L, B, N, C, generator=g)
        vals = [kd(zt + s * d, bt, zt, bt).item() for s in (0.1, 0.3, 1.0)]
        assert 0 < vals[0] < vals[1] < vals[2]
    # only the last stage matters
    z2 = zt.clone()
    z2[0] += 5
    assert LogitKDLoss()(z2, bt, zt, bt).abs() < 1e-6
    # softmax pair: KL over C + 1
    zs1 = torch.randn(L, B, N, C + 1, generator=g)
    assert LogitKDLoss()(zs1.clone(), bt, zs1, bt, student_activation="softmax",
                         teacher_activation="softmax").abs() < 1e-6
