"""A loop-based reference of the DETRDistill formulas, for the method tests (not a test module itself).

Written straight from the method spec (``shared/docs/detrdistill-method.md``; the section is cited at each function)
and deliberately independent of the package: plain Python floats, ``math`` and explicit loops over stages, images,
queries, classes and pixels -- no call into ``detrdistill`` (not its box, activation, matching or loss helpers).
Brute force where the package solves an assignment, so only tiny inputs are practical.

Conventions: tensors are turned into nested lists with ``.tolist()``; boxes are normalised (cx, cy, w, h); a
"softmax" model has C + 1 logits, the last one no-object (DETR); ``act`` is ``"sigmoid"`` or ``"softmax"``.
"""
from __future__ import annotations

import itertools
import math

OFFICIAL_LOGITS_WEIGHTS = (1.0, 5.0, 2.0)  # spec 1.1 step 3 / 2.1: soft BCE 1, L1 5, GIoU 2
OFFICIAL_MATCH_COSTS = (1.0, 5.0, 2.0)     # spec 1.1 step 2 / 2.1 "distill matcher": class 1, L1 5, GIoU 2


# ----------------------------------------------------------------------------------------------- scalars
def sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def log_sigmoid(z: float) -> float:
    return -math.log1p(math.exp(-z)) if z >= 0 else z - math.log1p(math.exp(z))


def softmax(z: list[float]) -> list[float]:
    m = max(z)
    e = [math.exp(v - m) for v in z]
    s = sum(e)
    return [v / s for v in e]


def foreground_probs(z: list[float], act: str) -> list[float]:
    """Spec 1.0: P = sigmoid(Z) per class; a softmax (DETR) model: softmax over C + 1, no-object dropped."""
    if act == "sigmoid":
        return [sigmoid(v) for v in z]
    return softmax(z)[:-1]


def soft_class_loss(z_s: list[float], act_s: str, z_t: list[float], act_t: str) -> float:
    """Spec 1.1 step 3: Σ_c BCE(student z_c, teacher p_c), summed (not averaged) over the classes.  Both models
    softmax: the soft cross-entropy over the full C + 1 distribution (the package's documented softmax choice)."""
    if act_s == "softmax" and act_t == "softmax":
        p, q = softmax(z_t), softmax(z_s)
        return -sum(pk * math.log(qk) for pk, qk in zip(p, q))
    p = foreground_probs(z_t, act_t)
    if act_s == "sigmoid":
        log_q, log_1mq = [log_sigmoid(v) for v in z_s], [log_sigmoid(-v) for v in z_s]
    else:
        q = softmax(z_s)[:-1]
        log_q, log_1mq = [math.log(v) for v in q], [math.log(1.0 - v) for v in q]
    return -sum(pc * a + (1.0 - pc) * b for pc, a, b in zip(p, log_q, log_1mq))


def binary_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1.0 - p) * math.log((1.0 - p) / (1.0 - q))


# ----------------------------------------------------------------------------------------------- boxes
def xyxy(b: list[float]) -> list[float]:
    cx, cy, w, h = b
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def cxcywh(b: list[float]) -> list[float]:
    x0, y0, x1, y1 = b
    return [(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0]


def clip(b: list[float]) -> list[float]:
    """Spec 1.1 step 1: the teacher box clipped to the image (here [0, 1]), back to cxcywh."""
    return cxcywh([min(max(v, 0.0), 1.0) for v in xyxy(b)])


def _area(b: list[float]) -> float:
    return max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)


def iou(a: list[float], b: list[float]) -> float:
    """IoU of two cxcywh boxes."""
    a, b = xyxy(a), xyxy(b)
    inter = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0) * max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    return inter / (_area(a) + _area(b) - inter)


def giou(a: list[float], b: list[float]) -> float:
    """Generalised IoU of two cxcywh boxes."""
    ax, bx = xyxy(a), xyxy(b)
    inter = max(min(ax[2], bx[2]) - max(ax[0], bx[0]), 0.0) * max(min(ax[3], bx[3]) - max(ax[1], bx[1]), 0.0)
    union = _area(ax) + _area(bx) - inter
    hull = (max(ax[2], bx[2]) - min(ax[0], bx[0])) * (max(ax[3], bx[3]) - min(ax[1], bx[1]))
    return inter / union - (hull - union) / hull


def l1(a: list[float], b: list[float]) -> float:
    return sum(abs(x - y) for x, y in zip(a, b))


# ----------------------------------------------------------------------------------------------- assignment
def brute_force(cost: list[list[float]], rows: list[int] | None = None, cols: list[int] | None = None):
    """Minimum-cost one-to-one pairing of the allowed rows with the allowed columns (min(#rows, #cols) pairs), by
    enumeration -> (best total, second-best total or inf, {row: col})."""
    rows = list(range(len(cost))) if rows is None else rows
    cols = list(range(len(cost[0]) if cost else 0)) if cols is None else cols
    if not rows or not cols:
        return 0.0, math.inf, {}
    if len(rows) <= len(cols):
        options = [dict(zip(rows, p)) for p in itertools.permutations(cols, len(rows))]
    else:
        options = [dict(zip(p, cols)) for p in itertools.permutations(rows, len(cols))]
    totals = sorted((sum(cost[r][c] for r, c in m.items()), k) for k, m in enumerate(options))
    second = totals[1][0] if len(totals) > 1 else math.inf
    return totals[0][0], second, options[totals[0][1]]


def focal_gt_cost(z: list[float], label: int, alpha: float = 0.25, gamma: float = 2.0) -> float:
    """Deformable DETR's focal matching class cost of one query for a GT of class ``label`` (spec 1.0 / 1.3)."""
    p = sigmoid(z[label])
    pos = alpha * (1 - p) ** gamma * -math.log(p + 1e-8)
    neg = (1 - alpha) * p ** gamma * -math.log(1 - p + 1e-8)
    return pos - neg


def gt_cost(z: list[float], box: list[float], label: int, gt_box: list[float], act: str,
            costs: tuple[float, float, float]) -> float:
    """Hungarian cost of a query against one GT:
    class_cost * (focal | -p[label]) + bbox_cost * L1 - giou_cost * GIoU."""
    cls = focal_gt_cost(z, label) if act == "sigmoid" else -softmax(z)[label]
    return costs[0] * cls + costs[1] * l1(box, gt_box) - costs[2] * giou(box, gt_box)


def student_teacher_cost(z_s, b_s, z_t, b_t, act_s, act_t, costs=OFFICIAL_MATCH_COSTS) -> float:
    """Spec 1.1 step 2: c_ij = 1 * Σ_c softBCE + 5 * L1(cxcywh) - 2 * GIoU, teacher box clipped first."""
    bt = clip(b_t)
    return costs[0] * soft_class_loss(z_s, act_s, z_t, act_t) + costs[1] * l1(b_s, bt) - costs[2] * giou(b_s, bt)


# ----------------------------------------------------------------------------------------------- logits (1.1)
def logits_distill(zs, bs, zt, bt, stage_map, act_s, act_t, weights=OFFICIAL_LOGITS_WEIGHTS,
                   costs=OFFICIAL_MATCH_COSTS):
    """Spec 1.1, variant "all": every student stage l matched to teacher stage ``stage_map[l]`` image by image
    (brute force), loss per stage = w_cls Σ BCE / M + w_L1 Σ L1 / M + w_GIoU Σ (1 - GIoU) / M over its M pairs,
    summed over stages.  Inputs are nested lists [L][B][N][.]
    -> (losses, matching [L_S][B][N_S], smallest gap between the best and second-best assignment)."""
    losses = {"logits_cls": 0.0, "logits_bbox": 0.0, "logits_giou": 0.0}
    matching, gap = [], math.inf
    for l, t in enumerate(stage_map):
        cls = box = gi = 0.0
        pairs = 0
        matching.append([])
        for b in range(len(zs[l])):
            n_s, n_t = len(zs[l][b]), len(zt[t][b])
            cost = [[student_teacher_cost(zs[l][b][i], bs[l][b][i], zt[t][b][j], bt[t][b][j], act_s, act_t, costs)
                     for j in range(n_t)] for i in range(n_s)]
            best, second, m = brute_force(cost)
            gap = min(gap, second - best)
            matching[l].append([m.get(i, -1) for i in range(n_s)])
            for i, j in m.items():
                target = clip(bt[t][b][j])
                cls += soft_class_loss(zs[l][b][i], act_s, zt[t][b][j], act_t)
                box += l1(bs[l][b][i], target)
                gi += 1.0 - giou(bs[l][b][i], target)
                pairs += 1
        losses["logits_cls"] += weights[0] * cls / pairs
        losses["logits_bbox"] += weights[1] * box / pairs
        losses["logits_giou"] += weights[2] * gi / pairs
    return losses, matching, gap


def pos_neg_distill(zs, bs, zt, bt, stage_map, act_s, act_t, teacher_assign, has_gt, pos_threshold, neg_weight,
                    weights=OFFICIAL_LOGITS_WEIGHTS, costs=OFFICIAL_MATCH_COSTS):
    """The package's documented reading of the paper's Eq. 3 / Eq. 4 (``logits.variant=pos_neg``; the spec marks
    Eq. 4 [UNVERIFIED], see the test's docstring).  Per stage and image: teacher positives = queries the teacher's
    own GT matching assigned (image with GT) or whose best class probability >= ``pos_threshold`` (image without
    GT); students matched to the positives with the full cost; the students left over matched to the negatives
    with the class cost alone.  Positive pairs: class + L1 + GIoU, each / #positive pairs; negative pairs: class
    only, ``neg_weight * w_cls`` / #negative pairs; summed over stages -> (losses, matching, positive flags, gap)."""
    losses = {"logits_cls": 0.0, "logits_bbox": 0.0, "logits_giou": 0.0, "logits_neg": 0.0}
    matching, positive, gap = [], [], math.inf
    for l, t in enumerate(stage_map):
        sums = {"cls": 0.0, "box": 0.0, "giou": 0.0, "neg": 0.0}
        n_pos = n_neg = 0
        matching.append([])
        positive.append([])
        for b in range(len(zs[l])):
            n_s, n_t = len(zs[l][b]), len(zt[t][b])
            if has_gt[b]:
                pos = [j for j in range(n_t) if teacher_assign[t][b][j] >= 0]
            else:
                pos = [j for j in range(n_t) if max(foreground_probs(zt[t][b][j], act_t)) >= pos_threshold]
            neg = [j for j in range(n_t) if j not in pos]
            full = [[student_teacher_cost(zs[l][b][i], bs[l][b][i], zt[t][b][j], bt[t][b][j], act_s, act_t, costs)
                     for j in range(n_t)] for i in range(n_s)]
            best, second, m_pos = brute_force(full, cols=pos)
            gap = min(gap, second - best)
            free = [i for i in range(n_s) if i not in m_pos]
            cls_only = [[soft_class_loss(zs[l][b][i], act_s, zt[t][b][j], act_t) for j in range(n_t)]
                        for i in range(n_s)]
            best, second, m_neg = brute_force(cls_only, rows=free, cols=neg)
            gap = min(gap, second - best)
            matching[l].append([m_pos.get(i, m_neg.get(i, -1)) for i in range(n_s)])
            positive[l].append([i in m_pos for i in range(n_s)])
            for i, j in m_pos.items():
                target = clip(bt[t][b][j])
                sums["cls"] += cls_only[i][j]
                sums["box"] += l1(bs[l][b][i], target)
                sums["giou"] += 1.0 - giou(bs[l][b][i], target)
                n_pos += 1
            for i, j in m_neg.items():
                sums["neg"] += cls_only[i][j]
                n_neg += 1
        losses["logits_cls"] += weights[0] * sums["cls"] / max(n_pos, 1)
        losses["logits_bbox"] += weights[1] * sums["box"] / max(n_pos, 1)
        losses["logits_giou"] += weights[2] * sums["giou"] / max(n_pos, 1)
        losses["logits_neg"] += neg_weight * weights[0] * sums["neg"] / max(n_neg, 1)
    return losses, matching, positive, gap


# ----------------------------------------------------------------------------------------------- feature (1.2)
def quality(z: list[list[float]], boxes: list[list[float]], gt_boxes: list[list[float]], top_k: int,
            act: str) -> list[tuple[float, int]]:
    """Spec 1.2 steps 1-2 for one stage and image: the top-K (query, class) pairs by teacher probability, each
    -> (q_k = s_k * max_g IoU(unclipped teacher box, GT g), or s_k without GT; query j_k)."""
    pairs = sorted(((p, j) for j, row in enumerate(z) for p in foreground_probs(row, act)), reverse=True)[:top_k]
    if not gt_boxes:
        return pairs
    return [(s * max(iou(boxes[j], g) for g in gt_boxes), j) for s, j in pairs]


def _unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def mask(selected: list[tuple[float, int]], emb: list[list[float]], feat: list[list[list[float]]],
         valid: list[list[bool]] | None, floor: float) -> tuple[list[list[float]], float]:
    """Spec 1.2 step 4 for one stage, image and level: A(x) = Σ_k q_k <e_k, f(x)/|f(x)|>, Ψ(x) = max(A(x), floor) /
    max over the image's real pixels; 0 on padding.  feat [d][H][W] -> (Ψ [H][W], the peak it was divided by)."""
    d, H, W = len(feat), len(feat[0]), len(feat[0][0])
    units = [(q, _unit(emb[j])) for q, j in selected]
    a = [[0.0] * W for _ in range(H)]
    for y in range(H):
        for x in range(W):
            f = _unit([feat[c][y][x] for c in range(d)])
            a[y][x] = max(sum(q * sum(ei * fi for ei, fi in zip(e, f)) for q, e in units), floor)
    real = [[valid is None or valid[y][x] for x in range(W)] for y in range(H)]
    peak = max(a[y][x] for y in range(H) for x in range(W) if real[y][x])
    return [[a[y][x] / peak if real[y][x] else 0.0 for x in range(W)] for y in range(H)], peak


def feature_distill(t_logits, t_boxes, t_emb, t_feats, s_feats, valid, gt_boxes, top_k, floor, act, weight=1.0):
    """Spec 1.2 step 5 (with the package's padding rule): for EVERY teacher stage l and level m,
    Σ_b Σ_(real x) Σ_c (Ψ_l,m,b(x) (F^T - F^S))² / (#real pixels * channels), summed over stages and levels.
    t_logits / t_boxes / t_emb [L_T][B][N][.], t_feats / s_feats per level [B][d][H][W], valid per level [B][H][W]
    or None, gt_boxes: per image a list of cxcywh boxes -> (loss, peaks[l][m][b])."""
    total, peaks = 0.0, []
    for l in range(len(t_logits)):
        peaks.append([])
        for m, (tf, sf) in enumerate(zip(t_feats, s_feats)):
            num, real = 0.0, 0
            peaks[l].append([])
            for b in range(len(tf)):
                v = valid[m][b] if valid is not None else None
                sel = quality(t_logits[l][b], t_boxes[l][b], gt_boxes[b], top_k, act)
                psi, peak = mask(sel, t_emb[l][b], tf[b], v, floor)
                peaks[l][m].append(peak)
                for y in range(len(psi)):
                    for x in range(len(psi[0])):
                        if v is not None and not v[y][x]:
                            continue
                        real += 1
                        num += sum((psi[y][x] * (tf[b][c][y][x] - sf[b][c][y][x])) ** 2 for c in range(len(tf[b])))
            total += num / (real * len(tf[0]))
    return weight * total, peaks


# ----------------------------------------------------------------------------------------------- contrastive (1.4)
def info_nce(g_teacher: list[list[float]], g_student: list[list[float]], tau: float) -> float:
    """Spec 1.4 for one stage: logits_ab = <ĝ_T(t_a), ĝ_S(s_b)> / τ (L2-normalised projections), softmax
    cross-entropy with the correct student of teacher row a in column a, averaged over the rows."""
    gt, gs = [_unit(v) for v in g_teacher], [_unit(v) for v in g_student]
    total = 0.0
    for a, ta in enumerate(gt):
        row = [sum(x * y for x, y in zip(ta, sb)) / tau for sb in gs]
        m = max(row)
        total += -(row[a] - (m + math.log(sum(math.exp(v - m) for v in row))))
    return total / len(gt)


# ----------------------------------------------------------------------------------------------- logit KD baseline
def logit_kd(zs, zt, matching, act_s, act_t, tau, weight):
    """The package's LogitKD baseline on one stage (its docstring: τ² · KL of matched pairs / #pairs; both softmax:
    KL over C + 1, else Σ_c binary KL of the foreground probabilities at temperature τ).  zs / zt [B][N][C']."""
    total, pairs = 0.0, 0
    for b, row in enumerate(matching):
        for i, j in enumerate(row):
            if j < 0:
                continue
            s, t = [v / tau for v in zs[b][i]], [v / tau for v in zt[b][j]]
            if act_s == "softmax" and act_t == "softmax":
                p, q = softmax(t), softmax(s)
                total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q))
            else:
                total += sum(binary_kl(p, q) for p, q in zip(foreground_probs(t, act_t), foreground_probs(s, act_s)))
            pairs += 1
    return weight * tau * tau * total / max(pairs, 1)
