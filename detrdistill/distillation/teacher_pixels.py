"""Feed the teacher pixels normalised the way its own image processor says, from the student's batch.

A teacher directory (or hub id) may carry a ``preprocessor_config.json``. When its normalisation differs from the
student's (the data pipeline's ImageNet mean/std), :class:`TeacherPixels` turns the student's normalised batch back
into the same augmented image and normalises it the teacher's way::

    raw   = x_S * std_S + mean_S                          (the augmented, resized image in [0, 1])
    x_T   = (raw * 255 * rescale_factor_T - mean_T) / std_T  (do_rescale / do_normalize of the processor honoured)
    x_T   = x_T * pixel_mask                              (padding stays zero, as the processor pads)

Both views come from the same augmented image and have the same size: the teacher's ``size`` settings are not
applied (resizing is the data pipeline's, identical for both models).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import ModelError

log = logging.getLogger("detrdistill")

__all__ = ["PixelNorm", "TeacherPixels", "build_teacher_pixels"]


@dataclass(frozen=True)
class PixelNorm:
    """How a [0, 1] image becomes model input: ``(raw * scale - mean) / std``."""
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1.0

    @classmethod
    def from_processor_config(cls, d: dict, where: str = "preprocessor_config.json") -> "PixelNorm":
        scale = 255.0 * float(d.get("rescale_factor", 1 / 255)) if d.get("do_rescale", True) else 255.0
        if not d.get("do_normalize", True):
            return cls((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), scale)
        mean, std = _triple(d.get("image_mean", (0.485, 0.456, 0.406))), _triple(d.get("image_std", (0.229, 0.224, 0.225)))
        if mean is None or std is None or min(std) <= 0:
            raise ModelError(f"{where}: image_mean / image_std must be 3 numbers (std > 0), got "
                             f"{d.get('image_mean')!r} / {d.get('image_std')!r}")
        return cls(mean, std, scale)

    def close_to(self, other: "PixelNorm", tol: float = 1e-6) -> bool:
        a = (*self.mean, *self.std, self.scale)
        b = (*other.mean, *other.std, other.scale)
        return all(abs(x - y) <= tol for x, y in zip(a, b))


def _triple(v) -> tuple[float, float, float] | None:
    if isinstance(v, (int, float)):
        return (float(v),) * 3
    if isinstance(v, Sequence) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v):
        return tuple(float(x) for x in v)
    return None


class TeacherPixels(nn.Module):
    """[B, 3, H, W] student-normalised pixels (+ [B, H, W] mask) -> the teacher's normalisation; no parameters."""

    def __init__(self, student: PixelNorm, teacher: PixelNorm):
        super().__init__()
        self.student, self.teacher = student, teacher
        # x_T = x_S * a + b, per channel
        a = [ss / st * teacher.scale / student.scale for ss, st in zip(student.std, teacher.std)]
        b = [(ms / student.scale * teacher.scale - mt) / st for ms, mt, st in zip(student.mean, teacher.mean, teacher.std)]
        self.register_buffer("a", torch.tensor(a).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", torch.tensor(b).view(1, 3, 1, 1), persistent=False)

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> Tensor:
        x = pixel_values * self.a.to(pixel_values.dtype) + self.b.to(pixel_values.dtype)
        if pixel_mask is not None:
            x = x * pixel_mask[:, None].to(x.dtype)
        return x


def build_teacher_pixels(processor_config: dict | None, student: PixelNorm, teacher_name: str = "teacher",
                         ) -> TeacherPixels | None:
    """None when the teacher has no processor config or normalises like the student; else a TeacherPixels."""
    if not processor_config:
        return None
    teacher = PixelNorm.from_processor_config(processor_config, f"{teacher_name}/preprocessor_config.json")
    if teacher.close_to(student):
        return None
    log.info("distill.teacher %s: fed pixels normalised its own way (mean %s, std %s%s) from the student's batch",
             teacher_name, list(teacher.mean), list(teacher.std),
             "" if teacher.scale == 1.0 else f", scale {teacher.scale:g}")
    return TeacherPixels(student, teacher)
