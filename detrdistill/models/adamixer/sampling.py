"""AdaMixer's adaptive 3D feature sampling, in plain PyTorch (``grid_sample``), batched over images and queries.

Each query places ``G * P`` points in the 3D feature space ``(x, y, z)``: ``x, y`` in input pixels, ``z`` a scale
comparable with ``log2(stride)`` of the levels. A point is read from every level by bilinear interpolation (zeros
outside the map, ``align_corners=False``) and the per-level values are summed with Gaussian-like weights over
``z``: ``softmax_m(-(z - log2 stride_m)**2 / tau)``. Group ``g`` reads channels ``g*C/G .. (g+1)*C/G``.

Shapes: B images, N queries, G groups, P points per group, M levels, C channels (a multiple of G).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from .box_coding import xyzr_to_wh

__all__ = ["level_weights", "make_sample_points", "sample_3d"]


def level_weights(z: Tensor, strides: Sequence[float], tau: float = 2.0) -> Tensor:
    """z [...] -> weights [..., M] over the levels (softmax of ``-(z - log2 stride)^2 / tau``)."""
    log_strides = torch.tensor([math.log2(s) for s in strides], dtype=z.dtype, device=z.device)
    return torch.softmax(-(z[..., None] - log_strides).pow(2) / tau, dim=-1)


def make_sample_points(offsets: Tensor, xyzr: Tensor) -> Tensor:
    """Query-relative offsets -> 3D sampling points.

    offsets [B, N, K, 3]: ``(dx, dy)`` in units of the box width / height, ``dz`` added to the box scale;
    xyzr [B, N, 4] boxes (pixels) -> points [B, N, K, 3] = ``(x + dx * w, y + dy * h, z + dz)``.
    """
    wh = xyzr_to_wh(xyzr)[:, :, None, :]
    xy = xyzr[:, :, None, :2] + offsets[..., :2] * wh
    z = xyzr[:, :, None, 2:3] + offsets[..., 2:3]
    return torch.cat([xy, z], dim=-1)


def _sample_level(value: Tensor, xy: Tensor, stride: float, n_groups: int) -> Tensor:
    """value [B, C, H, W]; xy [B, N, G, P, 2] pixels -> [B, N, G, P, C/G] bilinear samples of the group's channels."""
    B, C, H, W = value.shape
    _, N, G, P, _ = xy.shape
    # the map's extent in input pixels, built from the sizes as tensors (under ONNX tracing they are traced values,
    # so the graph stays size-generic; new_tensor([W * stride, ...]) would freeze the traced size)
    extent = torch.stack([torch.as_tensor(W, device=xy.device), torch.as_tensor(H, device=xy.device)]).to(xy.dtype)
    extent = extent * stride
    grid = (xy / extent) * 2.0 - 1.0
    grid = grid.permute(0, 2, 1, 3, 4).reshape(B * G, N, P, 2)
    out = F.grid_sample(value.reshape(B * G, C // G, H, W), grid, mode="bilinear", padding_mode="zeros",
                        align_corners=False)                                   # [B*G, C/G, N, P]
    return out.view(B, G, C // G, N, P).permute(0, 3, 1, 4, 2)


def sample_3d(features: Sequence[Tensor], strides: Sequence[float], points: Tensor, n_groups: int,
              tau: float = 2.0) -> Tensor:
    """Adaptive 3D sampling.

    features: M maps [B, C, H_m, W_m] (fine to coarse) with ``strides`` (pixels per cell);
    points [B, N, G * P, 3] from :func:`make_sample_points` (group-major: point k belongs to group k // P)
    -> sampled [B, N, G, P, C / G].
    """
    if len(features) != len(strides):
        raise ValueError(f"sample_3d: {len(features)} feature levels but {len(strides)} strides")
    B, N, K, _ = points.shape
    if K % n_groups:
        raise ValueError(f"sample_3d: {K} points do not split into {n_groups} groups")
    C = features[0].shape[1]
    if C % n_groups:
        raise ValueError(f"sample_3d: {C} channels do not split into {n_groups} groups")
    xy = points[..., :2].reshape(B, N, n_groups, K // n_groups, 2)
    weights = level_weights(points[..., 2], strides, tau).reshape(B, N, n_groups, K // n_groups, len(strides))
    out = None
    for m, (value, stride) in enumerate(zip(features, strides)):
        sampled = _sample_level(value, xy, float(stride), n_groups) * weights[..., m:m + 1]
        out = sampled if out is None else out + sampled
    return out
