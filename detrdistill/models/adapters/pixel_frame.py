"""Pixel masks and the two box frames of a padded batch: fractions of each image's real pixels (what every loss and
output here uses) and fractions of the padded canvas (what RT-DETR-family losses and padding image processors use).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def default_pixel_mask(pixel_values: Tensor) -> Tensor:
    """All-ones ``[B, H, W]`` long mask (what transformers uses when no mask is given)."""
    b, _, h, w = pixel_values.shape
    return torch.ones((b, h, w), dtype=torch.long, device=pixel_values.device)


def downsample_mask(pixel_mask: Tensor, size: Sequence[int]) -> Tensor:
    """Pixel mask ``[B, H, W]`` -> bool ``[B, h, w]`` at a feature level's size: nearest interpolation, the formula
    transformers' convolutional backbones use for the masks they return (for models that never compute one)."""
    return nn.functional.interpolate(pixel_mask[None].float(), size=tuple(int(s) for s in size)).bool()[0]


def padded_frame_scale(pixel_mask: Tensor) -> Tensor | None:
    """Per-image factors ``[B, 4]`` = (w/W, h/H, w/W, h/H) that take normalised cxcywh boxes relative to each image's
    real pixels (``h`` x ``w``, top-left, padding bottom/right) to boxes relative to the padded ``H`` x ``W`` input;
    None when no image of the batch is padded.

    For models that never read the pixel mask (RT-DETR, D-FINE, DEIMv2): their boxes are fractions of the input
    they see, padding included, while the project's targets and outputs are fractions of the real image. Their
    adapters multiply targets by this on the way in and divide predicted boxes by it on the way out.
    """
    real = pixel_mask.bool()
    h, w = real.shape[-2:]
    rows = real.any(dim=2).sum(dim=1).clamp(min=1)  # [B] rows holding a real pixel
    cols = real.any(dim=1).sum(dim=1).clamp(min=1)
    if bool((rows == h).all()) and bool((cols == w).all()):
        return None
    sx, sy = cols.float() / w, rows.float() / h
    return torch.stack([sx, sy, sx, sy], dim=-1)


def boxes_to_real_frame(boxes: Tensor, pixel_mask: Tensor | None) -> Tensor:
    """A mask-blind model's final boxes ``[B, N, 4]`` (fractions of its padded input) as fractions of each image's
    real pixels (beyond 1 in the padding): what the adapters report, for callers of the plain transformers model
    (predict, the ONNX runtime). Unchanged without a mask or padding."""
    return scaled_to_real_frame(boxes, None if pixel_mask is None else padded_frame_scale(pixel_mask))


def scaled_to_real_frame(boxes: Tensor, scale: Tensor | None) -> Tensor:
    """Boxes ``[..., B, N, 4]`` as fractions of the padded input -> fractions of each image's real pixels, given
    :func:`padded_frame_scale` (None: unchanged). Not clamped: a box in the padding reaches beyond 1, so a reference
    taken back into the padded frame on the same batch is exact, and every path that converts agrees."""
    return boxes if scale is None else boxes / scale[:, None].to(boxes)


def targets_in_padded_frame(targets: list[dict], scale: Tensor | None) -> list[dict]:
    """The inverse of :func:`scaled_to_real_frame` for targets: each image's ``boxes`` (fractions of its real pixels)
    times its :func:`padded_frame_scale` row, as a model that never reads the mask sees them (None: unchanged)."""
    if scale is None:
        return targets
    return [{**t, "boxes": t["boxes"] * s.to(t["boxes"])} for t, s in zip(targets, scale)]


def padded_targets_to_real_frame(targets: list[dict], pixel_mask: Tensor | None) -> list[dict]:
    """Targets whose ``size`` is the padded input (the H x W of ``pixel_mask``), as a padding transformers image
    processor makes them (their boxes are fractions of that canvas): boxes divided by the image's
    :func:`padded_frame_scale` row (fractions of its real pixels, the frame every loss reads) and ``size`` set to
    the real one. Every other target (no ``size``, another one, an image without a real pixel) as it is."""
    scale = None if pixel_mask is None else padded_frame_scale(pixel_mask)
    if scale is None:
        return targets
    H, W = pixel_mask.shape[-2:]
    has_pixels = pixel_mask.flatten(1).any(1).tolist()
    out = []
    for t, s, real in zip(targets, scale, has_pixels):
        size = t.get("size")
        if not real or size is None or [int(v) for v in size] != [H, W]:
            out.append(t)
            continue
        hw = [round(float(s[1]) * H), round(float(s[0]) * W)]
        out.append({**t, "boxes": t["boxes"] / s.to(t["boxes"]),
                    "size": torch.tensor(hw, dtype=torch.long, device=size.device) if isinstance(size, Tensor) else hw})
    return out
