"""Target-aware feature distillation (DETRDistill §3.3).

Shapes: B images, N teacher queries, C classes, K = top_k selected (query, class) pairs, d teacher width,
levels m with maps [B, d, H_m, W_m]; an optional leading stage dim ``...`` (e.g. L_T teacher stages) is carried
through :func:`quality_scores` and :func:`target_aware_mask`, so all teacher stages are handled in one call.

Mask (exactly the official code, per teacher stage and image):

1. top-K over the flattened (query x class) teacher probabilities (a query may be selected for several classes);
2. quality ``q_k = s_k * max_g IoU(teacher box of query j_k, GT g)`` (teacher box NOT clipped); ``q_k = s_k`` when
   the image has no GT;
3. ``A_m(x) = Σ_k q_k <e_k, f(x)>`` with ``e_k`` the L2-normalised decoder embedding of query j_k and ``f(x)`` the
   L2-normalised (over channels) teacher feature at location x;
4. ``Ψ_m(x) = max(A_m(x), floor) / max_x' max(A_m(x'), floor)``, so Ψ is in (0, 1] on real pixels.

Loss per teacher stage: ``Σ_m mean over (real pixels, channels) of (Ψ_m (F^T_m - A_m(F^S_m)))^2``, i.e. the error is
weighted by Ψ², and the total is summed over the given stages.  Mask and teacher side carry no gradient.

Decisions (documented deviations):

* **Padding.**  The official code builds Ψ and the mean over the whole padded map.  Here padded positions (from
  the teacher's ``feature_masks``) get Ψ = 0, the per-image max runs over real pixels only, and the mean divides by
  the number of real pixels times channels (so a batch with much padding is not diluted).  Without masks every
  position counts as real, which reproduces the code.
* **IoU in normalised coordinates.**  The code uses pixel boxes; IoU is invariant to the per-axis scaling, so the
  quality scores are identical.
* **Channel mismatch.**  A 1x1 conv adapter (student -> teacher width, FGD ``align`` style) per level where the
  widths differ, identity elsewhere (:func:`~.connectors.level_adapters`).  The adapters live in
  ``FeatureDistillLoss.adapters`` and are not part of
  the exported student.
* **Level count mismatch.**  Levels are paired by ``level_pairs`` (student level, teacher level); with equal
  counts the default is level i <-> level i.  :func:`level_pairs_by_resolution` pairs the levels that have the
  same spatial size (the :class:`~detrdistill.distillation.distiller.Distiller` derives it from a probe forward);
  unpaired levels are not distilled.
* **Unnormalised features** (``normalize=True``; ``distill.feature.normalize``): both the teacher map and the
  adapted student map go through a parameter-free GroupNorm (:func:`group_normalize`) before the error, so a family
  whose encoder inputs come from a plain 1x1 projection (DETR, Conditional DETR, DAB-DETR: values in the hundreds)
  is distilled at the scale of the official code's GroupNorm'ed ChannelMapper features instead of swamping the
  detection loss.  Off for normalised features, which reproduces the code.
* **Spatial size mismatch** of a pair: the adapted student map is bilinearly resized to the teacher's size
  (``align_corners=False``); the teacher side and its mask are never resampled.  When the teacher was fed its own
  resized view (:mod:`.teacher_pixels`), the student map is instead sampled on the teacher's grid image by image
  through the view's ``affine`` (``grid_sample``, zeros outside the student's canvas).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models.outputs import class_probs
from ..ops.boxes import box_iou, cxcywh_to_xyxy
from ..ops.matcher import pad_targets
from .connectors import level_adapters


def norm_groups(channels: int, most: int = 32) -> int:
    """The largest group count <= ``most`` that divides ``channels`` (32 for the usual widths, as GroupNorm(32))."""
    return next(g for g in range(min(most, channels), 0, -1) if channels % g == 0)


def group_normalize(x: Tensor) -> Tensor:
    """Parameter-free GroupNorm of a map [B, C, H, W] (:func:`norm_groups` groups, eps 1e-5), in float32."""
    return F.group_norm(x.float(), norm_groups(x.shape[1]))


@torch.no_grad()
def quality_scores(teacher_logits: Tensor, teacher_boxes: Tensor, targets: list[dict], top_k: int = 100,
                   activation: str = "sigmoid") -> tuple[Tensor, Tensor]:
    """Quality of the top-K teacher (query, class) pairs.

    teacher_logits [..., B, N, C'] (C' = C, or C + 1 for ``activation="softmax"``), teacher_boxes [..., B, N, 4]
    normalised cxcywh, targets: B dicts (``boxes`` cxcywh, may be empty)
    -> (quality [..., B, K], query index [..., B, K]) with K = min(top_k, N * C).
    """
    probs = class_probs(teacher_logits.detach().float(), activation)    # [..., B, N, C]
    *lead, B, N, C = probs.shape
    if len(targets) != B:
        raise ValueError(f"{len(targets)} targets for a batch of {B}")
    k = min(int(top_k), N * C)
    scores, flat_idx = probs.flatten(-2).topk(k, dim=-1)                 # [..., B, K]
    query = torch.div(flat_idx, C, rounding_mode="floor")
    boxes = teacher_boxes.detach().float().gather(-2, query[..., None].expand(*query.shape, 4))
    _, gt_boxes, valid = pad_targets(targets, probs.device)              # [B, T, 4], [B, T]
    if gt_boxes.shape[1] == 0:
        return scores, query
    iou, _ = box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes.float()))   # [..., B, K, T]
    best = iou.masked_fill(~valid[:, None, :], 0.0).amax(-1)                     # [..., B, K]
    has_gt = valid.any(1)[:, None]                                               # [B, 1]
    return torch.where(has_gt, scores * best, scores), query


@torch.no_grad()
def target_aware_mask(teacher_embeddings: Tensor, teacher_features: Sequence[Tensor], scores: Tensor,
                      indices: Tensor, feature_masks: Sequence[Tensor] | None = None,
                      floor: float = 0.01) -> list[Tensor]:
    """Quality-weighted spatial masks Ψ per level.

    teacher_embeddings [..., B, N, d] (decoder outputs of the stage(s) the scores come from),
    teacher_features   per level [B, d, H_m, W_m],
    scores / indices   [..., B, K] from :func:`quality_scores`,
    feature_masks      per level [B, H_m, W_m] bool (True = real pixel) or None (all real)
    -> per level [..., B, H_m, W_m] float: in [floor / max, 1] on real pixels, 0 on padding.
    """
    emb = F.normalize(teacher_embeddings.detach().float(), dim=-1)
    sel = emb.gather(-2, indices[..., None].expand(*indices.shape, emb.shape[-1]))   # [..., B, K, d]
    weight = (scores.float()[..., None] * sel).sum(-2)                               # [..., B, d]
    masks = []
    for m, feat in enumerate(teacher_features):
        if feat.shape[1] != weight.shape[-1]:
            raise ValueError(f"teacher feature level {m} has {feat.shape[1]} channels but the decoder embeddings "
                             f"have {weight.shape[-1]}; the mask needs them equal")
        f_hat = F.normalize(feat.detach().float(), dim=1)
        with torch.autocast(device_type=f_hat.device.type, enabled=False):
            a = torch.einsum("...bd,bdhw->...bhw", weight, f_hat).clamp(min=floor)    # [..., B, H, W]
        if feature_masks is not None and feature_masks[m] is not None:
            a = a * feature_masks[m].to(a.device, a.dtype)
        peak = a.flatten(-2).amax(-1).clamp(min=floor)[..., None, None]
        masks.append(a / peak)
    return masks


def level_pairs_by_resolution(student_sizes: Sequence[tuple[int, int]],
                              teacher_sizes: Sequence[tuple[int, int]]) -> list[tuple[int, int]]:
    """Pair each teacher level with the (first unused) student level of the same spatial size.

    -> list of (student level, teacher level); raises ValueError when no level sizes agree.
    """
    pairs, used = [], set()
    for t, ts in enumerate(teacher_sizes):
        for s, ss in enumerate(student_sizes):
            if s not in used and tuple(ss) == tuple(ts):
                pairs.append((s, t))
                used.add(s)
                break
    if not pairs:
        raise ValueError(f"no student feature level has the size of a teacher level (student {list(student_sizes)}, "
                         f"teacher {list(teacher_sizes)}); feature distillation cannot pair them")
    return pairs


def sample_on_teacher_grid(x: Tensor, affine: Tensor, size: tuple[int, int]) -> Tensor:
    """x [B, C, H, W] (a student map), affine [B, 2] (student real side / teacher real side, y and x) -> [B, C,
    *size] sampled at the points of a teacher map of ``size`` (the same stride as ``x``).

    Normalised coordinates (``align_corners=False``): ``u_S = (u_T + 1) * a - 1`` per axis with ``a = affine *
    (teacher map side / student map side)``: both maps anchored at their top-left corner, each spanning its map side
    times the stride in pixels (which may overhang its canvas), the teacher's real region mapped onto the student's.
    """
    a = affine.to(x.device, x.dtype) * x.new_tensor([size[0] / x.shape[-2], size[1] / x.shape[-1]])
    theta = x.new_zeros(x.shape[0], 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = a[:, 1], a[:, 1] - 1   # x (width) row
    theta[:, 1, 1], theta[:, 1, 2] = a[:, 0], a[:, 0] - 1   # y (height) row
    grid = F.affine_grid(theta, [x.shape[0], x.shape[1], *size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class FeatureDistillLoss(nn.Module):
    """Masked feature MSE with 1x1 conv adapters where student and teacher widths differ.

    student_channels / teacher_channels: per level.  level_pairs: (student level, teacher level) pairs to distil;
    default level i <-> level i (requires equal level counts).  normalize: :func:`group_normalize` both sides first.
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int], weight: float = 1.0,
                 level_pairs: Sequence[tuple[int, int]] | None = None, normalize: bool = False):
        super().__init__()
        self.normalize = bool(normalize)
        self.student_channels = [int(c) for c in student_channels]
        self.teacher_channels = [int(c) for c in teacher_channels]
        if level_pairs is None:
            if len(self.student_channels) != len(self.teacher_channels):
                raise ValueError(
                    f"student has {len(self.student_channels)} feature levels, teacher {len(self.teacher_channels)}: "
                    f"pass level_pairs (see level_pairs_by_resolution)")
            level_pairs = [(i, i) for i in range(len(self.teacher_channels))]
        self.level_pairs = [(int(s), int(t)) for s, t in level_pairs]
        for s, t in self.level_pairs:
            if not (0 <= s < len(self.student_channels) and 0 <= t < len(self.teacher_channels)):
                raise ValueError(f"level pair {(s, t)} out of range")
        self.weight = weight
        self.adapters = level_adapters(self.student_channels, self.teacher_channels, self.level_pairs)

    def extra_repr(self) -> str:
        return f"level_pairs={self.level_pairs}, weight={self.weight}, normalize={self.normalize}"

    def adapt(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor],
              affine: Tensor | None = None) -> list[Tensor]:
        """Adapted student maps, one per level pair, at the teacher's spatial size (float32).

        affine [B, 2]: student real side / teacher real side per image (:class:`~.teacher_pixels.TeacherInput`);
        None = the two canvases show the same image region (a plain resize when the sizes differ)."""
        out = []
        for (s, t), adapter in zip(self.level_pairs, self.adapters):
            x = student_features[s]
            if isinstance(adapter, nn.Conv2d):
                x = adapter(x.to(adapter.weight.dtype))
            x = x.float()
            size = teacher_features[t].shape[-2:]
            if affine is not None:
                x = sample_on_teacher_grid(x, affine, tuple(size))
            elif x.shape[-2:] != size:
                x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
            out.append(x)
        return out

    def forward(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor],
                masks: Sequence[Tensor] | None = None, valid_masks: Sequence[Tensor] | None = None,
                affine: Tensor | None = None) -> Tensor:
        """Weighted loss, summed over the stage dims of the masks and over the level pairs.

        student_features per student level [B, c_S, H, W] (with grad); teacher_features per teacher level
        [B, c_T, H', W']; masks per TEACHER level [..., B, H', W'] (Ψ of one or several stages) or None
        (unmasked: FitNet); valid_masks per teacher level [B, H', W'] bool (True = real pixel) or None;
        affine: the teacher view's geometry (see :meth:`adapt`).
        """
        adapted = self.adapt(student_features, teacher_features, affine)
        total = adapted[0].new_zeros(()) if adapted else torch.zeros(())
        for (s, t), x in zip(self.level_pairs, adapted):
            tf = teacher_features[t].detach().float()
            if self.normalize:
                tf, x = group_normalize(tf), group_normalize(x)
            B, C, H, W = tf.shape
            sq = (tf - x).pow(2).sum(1)                                              # [B, H, W]
            if masks is not None:
                w = masks[t].detach().float().pow(2).reshape(-1, B, H, W).sum(0)    # Σ over stages of Ψ²
            else:
                w = sq.new_ones(B, H, W)
            if valid_masks is not None and valid_masks[t] is not None:
                valid = valid_masks[t].to(sq.device, torch.bool)
                w = w * valid
                n_real = valid.sum()
            else:
                n_real = torch.tensor(B * H * W, device=sq.device)
            total = total + (w * sq).sum() / (n_real.clamp(min=1) * C)
        return self.weight * total
