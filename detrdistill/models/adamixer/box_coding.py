"""AdaMixer's box parameterisation and the box positional encoding.

A query box is ``xyzr`` ``[..., 4]`` in input pixels: centre ``(x, y)``, scale ``z = log2(sqrt(w * h))`` and aspect
``r = log2(h / w)``, so ``w = 2**z * 2**(-r/2)``, ``h = 2**z * 2**(r/2)``. ``z`` is directly comparable with
``log2(stride)`` of a feature level, which is what the 3D sampling uses. The outputs of the model are normalised
``(cx, cy, w, h)`` relative to each image's un-padded size ``image_wh`` ``[B, 2]`` (pixels).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["xyzr_to_wh", "xyzr_to_cxcywh", "cxcywh_to_xyzr", "refine_xyzr", "box_position_encoding",
           "iof_matrix", "image_sizes_from_mask"]

_MIN_SIDE = 1e-3  # pixels: keeps log2 finite for degenerate boxes given as extra queries


def xyzr_to_wh(xyzr: Tensor) -> Tensor:
    """[..., 4] -> box width and height [..., 2] in pixels."""
    scale = torch.pow(2.0, xyzr[..., 2:3])
    ratio = torch.pow(2.0, torch.cat([-0.5 * xyzr[..., 3:4], 0.5 * xyzr[..., 3:4]], dim=-1))
    return scale * ratio


def xyzr_to_cxcywh(xyzr: Tensor, image_wh: Tensor) -> Tensor:
    """xyzr [B, N, 4] (pixels) -> normalised cxcywh [B, N, 4] relative to ``image_wh`` [B, 2]."""
    whwh = image_wh.repeat(1, 2)[:, None, :].to(xyzr.dtype)
    return torch.cat([xyzr[..., :2], xyzr_to_wh(xyzr)], dim=-1) / whwh


def cxcywh_to_xyzr(boxes: Tensor, image_wh: Tensor) -> Tensor:
    """Normalised cxcywh [B, N, 4] -> xyzr [B, N, 4] in pixels of images of un-padded size ``image_wh`` [B, 2]."""
    whwh = image_wh.repeat(1, 2)[:, None, :].to(boxes.dtype)
    px = boxes * whwh
    wh = px[..., 2:].clamp(min=_MIN_SIDE)
    z = 0.5 * torch.log2(wh[..., 0:1] * wh[..., 1:2])
    r = torch.log2(wh[..., 1:2] / wh[..., 0:1])
    return torch.cat([px[..., :2], z, r], dim=-1)


def refine_xyzr(xyzr: Tensor, delta: Tensor) -> Tensor:
    """AdaMixer's box update: centre moves by ``delta_xy * 2**z``, scale and aspect add ``delta_zr``."""
    xy = xyzr[..., :2] + delta[..., :2] * torch.pow(2.0, xyzr[..., 2:3])
    return torch.cat([xy, xyzr[..., 2:] + delta[..., 2:]], dim=-1)


def box_position_encoding(boxes: Tensor, dim: int, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of normalised cxcywh boxes [B, N, 4] -> [B, N, dim] (dim / 4 features per coordinate).

    Each coordinate (scaled by 2 pi) gets interleaved sin / cos at ``dim / 8`` frequencies, as DETR's sine
    embedding; the (normalised) box rather than AdaMixer's pixel ``xyzr`` so the encoding is resolution-free.
    """
    if dim % 8:
        raise ValueError(f"box_position_encoding: dim ({dim}) must be a multiple of 8")
    per = dim // 4
    freq = torch.arange(per, dtype=torch.float32, device=boxes.device)
    freq = temperature ** (2 * torch.div(freq, 2, rounding_mode="floor") / per)
    pos = boxes.float()[..., None] * (2 * math.pi) / freq                    # [B, N, 4, per]
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)
    return pos.flatten(-2).to(boxes.dtype)


def iof_matrix(xyzr: Tensor) -> Tensor:
    """Intersection over the first box's area, [B, N, 4] xyzr -> [B, N, N] (row i: fraction of box i covered by j)."""
    wh = xyzr_to_wh(xyzr)
    lo, hi = xyzr[..., :2] - 0.5 * wh, xyzr[..., :2] + 0.5 * wh
    inter_lo = torch.maximum(lo[:, :, None], lo[:, None, :])
    inter_hi = torch.minimum(hi[:, :, None], hi[:, None, :])
    inter = (inter_hi - inter_lo).clamp(min=0).prod(-1)
    area = wh.prod(-1)
    return inter / area[:, :, None].clamp(min=1e-12)


def image_sizes_from_mask(pixel_mask: Tensor) -> Tensor:
    """[B, H, W] mask (1 = real pixel, top-left aligned) -> un-padded (width, height) [B, 2] float, at least 1."""
    m = pixel_mask.bool()
    w = m.any(dim=1).sum(-1)
    h = m.any(dim=2).sum(-1)
    return torch.stack([w, h], dim=-1).clamp(min=1).float()
