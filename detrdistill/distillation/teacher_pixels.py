"""Feed the teacher pixels the way its own image processor says, from the student's augmented batch.

A teacher directory (or hub id) may carry a ``preprocessor_config.json``. Its settings are honoured on the
student's batch, so both views come from the same augmented image:

* **Normalisation.** When it differs from the student's (the data pipeline's ImageNet mean/std), the student's
  normalised batch is turned back into the augmented image and normalised the teacher's way::

      raw   = x_S * std_S + mean_S                             (the augmented, resized image in [0, 1])
      x_T   = (raw * 255 * rescale_factor_T - mean_T) / std_T  (do_rescale / do_normalize honoured)

* **Resizing.** Each image's real region (from ``pixel_mask``) is resized bilinearly (antialiased) by the
  processor's ``size`` rule -- ``shortest_edge``/``longest_edge``, ``height``/``width`` (stretch),
  ``max_height``/``max_width``, computed with transformers' own size functions -- and zero-padded bottom/right
  to the batch's largest side (or the processor's ``pad_size``), rounded up to a multiple of 32 as the data
  pipeline rounds the student's (RT-DETR-style teachers refuse other sides). The geometry is kept per image as
  ``affine [B, 2] = (student real side / teacher real side)`` per axis (y, x); a feature term samples a student map
  on a teacher map's grid with, in ``grid_sample``'s normalised coordinates, ``u_S = (u_T + 1) * a - 1`` and
  ``a = affine * (teacher map side / student map side)`` (:func:`~.feature.sample_on_teacher_grid`): exact for every
  level of equal stride, also one whose map overhangs its canvas (a stride-64 level of a 96-px canvas). Boxes are
  normalised to the real image region in every family, so logits, boxes and queries need no conversion.

Which of the two applies is ``distill.teacher_input``:

* ``auto`` (default): normalisation whenever it differs; resizing only when the teacher's ``size`` rule differs
  from the student's eval resize (``data.eval_size`` / ``data.max_size``), and then **never enlarging**: an image
  the rule would make larger (a hub teacher's 800 x 1333 for 128 px images: 65x the pixels, about 100 s a step on
  a CPU) is fed at the student's size, a larger one is shrunk by the rule; no fixed ``pad_size`` canvas either. A
  teacher trained by this project with the same data settings therefore sees exactly the student's augmented view,
  scale jitter included.
* ``processor``: normalisation and resizing always as the processor says, enlarging included (a fixed, eval-like
  teacher view, at the teacher's cost).
* ``student``: the student's pixels as they are.

Padding stays zero, as the processor pads. :func:`log_first_step_cost` logs, on the first batch, both input sizes and
the measured forward times (one line, with a hint naming ``distill.teacher_input`` when the teacher's view is much
larger than the student's).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NamedTuple, get_args

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TeacherInputMode
from ..errors import ModelError
from ..models.pixel_norm import PixelNorm, with_class_defaults

log = logging.getLogger("detrdistill")

__all__ = ["PixelNorm", "ResizeRule", "TeacherInput", "TeacherPixels", "build_teacher_pixels", "TEACHER_INPUT_MODES",
           "log_first_step_cost", "step_seconds", "LARGE_VIEW_RATIO", "warn_no_teacher_processor"]

#: a teacher view with at least this many times the student's pixels gets the distill.teacher_input hint
LARGE_VIEW_RATIO = 4.0

TEACHER_INPUT_MODES: tuple[str, ...] = get_args(TeacherInputMode)


@dataclass(frozen=True)
class ResizeRule:
    """A processor's ``size`` setting: ``kind`` is ``shortest_longest`` (a = shortest edge, b = longest edge cap),
    ``height_width`` (stretch to a x b) or ``max_height_width`` (fit in a x b, aspect kept)."""
    kind: str
    a: int
    b: int

    @classmethod
    def from_processor_config(cls, d: dict, where: str = "preprocessor_config.json") -> "ResizeRule | None":
        """None when the processor does not resize."""
        if not d.get("do_resize", True) or d.get("size") is None:
            return None
        size = d["size"]
        if isinstance(size, int):  # old configs: an int short side, max_size beside it
            size = {"shortest_edge": size, "longest_edge": d.get("max_size") or 1333}
        if not isinstance(size, dict):
            raise ModelError(f"{where}: 'size' must be a dict such as {{'shortest_edge': 800, 'longest_edge': 1333}}, "
                             f"got {size!r}")
        try:
            if size.get("shortest_edge"):
                return cls("shortest_longest", int(size["shortest_edge"]),
                           int(size.get("longest_edge") or size["shortest_edge"]))
            if size.get("height") and size.get("width"):
                return cls("height_width", int(size["height"]), int(size["width"]))
            if size.get("max_height") and size.get("max_width"):
                return cls("max_height_width", int(size["max_height"]), int(size["max_width"]))
        except (TypeError, ValueError):
            pass
        raise ModelError(f"{where}: unsupported 'size' {size!r}; expected shortest_edge/longest_edge, height/width "
                         "or max_height/max_width")

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h', w') of an h x w image, as transformers' DETR-family processors compute it."""
        if self.kind == "height_width":
            return self.a, self.b
        if self.kind == "max_height_width":
            from transformers.image_utils import get_image_size_for_max_height_width
            return tuple(get_image_size_for_max_height_width((h, w), self.a, self.b))
        from transformers.image_transforms import get_size_with_aspect_ratio
        return tuple(get_size_with_aspect_ratio((h, w), self.a, self.b))


class TeacherInput(NamedTuple):
    """What the teacher is fed: pixel_values [B, 3, H_T, W_T], pixel_mask [B, H_T, W_T] or None, and ``affine``
    [B, 2] (student real side / teacher real side per axis, see the module docstring) or None when the two grids
    coincide."""
    pixel_values: Tensor
    pixel_mask: Tensor | None
    affine: Tensor | None = None


def _pad_size(d: dict) -> tuple[int, int] | None:
    p = d.get("pad_size") if d.get("do_pad", True) else None
    if isinstance(p, dict) and p.get("height") and p.get("width"):
        return int(p["height"]), int(p["width"])
    return None


class TeacherPixels(nn.Module):
    """[B, 3, H, W] student-normalised pixels (+ [B, H, W] mask) -> :class:`TeacherInput`; no parameters.

    student / teacher: the two normalisations (``teacher=None``: unchanged); resize: the teacher's size rule
    (None: the student's grid); pad_size: the processor's fixed canvas (H, W), if any; enlarge: False keeps an image
    the rule would make larger at its own size (``distill.teacher_input=auto``); size_divisor: the resized canvas's
    sides are rounded up to a multiple of it (the data pipeline's, :func:`~detrdistill.data.collate_fn`).
    """

    def __init__(self, student: PixelNorm, teacher: PixelNorm | None = None, resize: ResizeRule | None = None,
                 pad_size: tuple[int, int] | None = None, enlarge: bool = True, size_divisor: int = 32):
        super().__init__()
        self.student, self.teacher, self.resize, self.pad_size = student, teacher, resize, pad_size
        self.enlarge, self.size_divisor = enlarge, max(1, int(size_divisor))
        self.normalises = teacher is not None and not teacher.close_to(student)
        teacher = teacher or student
        # x_T = x_S * a + b, per channel
        a = [ss / st * teacher.scale / student.scale for ss, st in zip(student.std, teacher.std)]
        b = [(ms / student.scale * teacher.scale - mt) / st for ms, mt, st in zip(student.mean, teacher.mean, teacher.std)]
        self.register_buffer("a", torch.tensor(a).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("b", torch.tensor(b).view(1, 3, 1, 1), persistent=False)

    def extra_repr(self) -> str:
        return f"normalises={self.normalises}, resize={self.resize}, pad_size={self.pad_size}, enlarge={self.enlarge}"

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> TeacherInput:
        x = pixel_values
        if self.normalises:
            x = x * self.a.to(x.dtype) + self.b.to(x.dtype)
            if pixel_mask is not None:
                x = x * pixel_mask[:, None].to(x.dtype)
        if self.resize is None:
            return TeacherInput(x, pixel_mask, None)
        return self._resized(x, pixel_mask)

    def _resized(self, x: Tensor, pixel_mask: Tensor | None) -> TeacherInput:
        B, _, H, W = x.shape
        if pixel_mask is None:
            real = [(H, W)] * B
        else:  # padding is bottom/right: the real region is the rows / columns holding a real pixel
            m = pixel_mask.bool()
            real = list(zip(m.any(2).sum(1).tolist(), m.any(1).sum(1).tolist()))
        out_sizes = [self.resize.output_size(h, w) for h, w in real]
        if not self.enlarge:  # auto: an image the rule would make larger keeps its own size
            out_sizes = [(oh, ow) if oh * ow <= h * w else (h, w) for (h, w), (oh, ow) in zip(real, out_sizes)]
        if out_sizes == real and self.pad_size is None:
            return TeacherInput(x, pixel_mask, None)
        Ht = max(h for h, _ in out_sizes)
        Wt = max(w for _, w in out_sizes)
        if self.pad_size is not None:
            Ht, Wt = max(Ht, self.pad_size[0]), max(Wt, self.pad_size[1])
        d = self.size_divisor
        Ht, Wt = -(-Ht // d) * d, -(-Wt // d) * d
        y = x.new_zeros(B, x.shape[1], Ht, Wt)
        mask = torch.zeros(B, Ht, Wt, dtype=pixel_mask.dtype if pixel_mask is not None else torch.long,
                           device=x.device)
        affine = torch.empty(B, 2, dtype=torch.float32)
        for i, ((h, w), (oh, ow)) in enumerate(zip(real, out_sizes)):
            if h > 0 and w > 0:
                y[i, :, :oh, :ow] = F.interpolate(x[i:i + 1, :, :h, :w], size=(oh, ow), mode="bilinear",
                                                  align_corners=False, antialias=True)[0]
            mask[i, :oh, :ow] = 1
            affine[i, 0] = h / max(oh, 1)
            affine[i, 1] = w / max(ow, 1)
        return TeacherInput(y, mask, affine.to(x.device))


def build_teacher_pixels(processor_config: dict | None, student: PixelNorm, teacher_name: str = "teacher",
                         student_resize: ResizeRule | None = None, mode: str = "auto") -> TeacherPixels | None:
    """None when the teacher is fed the student's pixels unchanged; else a :class:`TeacherPixels`.

    processor_config: the teacher's ``preprocessor_config.json`` (None: none saved); student_resize: the student's
    eval resize rule (``auto`` resizes only when the teacher's differs); mode: ``distill.teacher_input``.
    """
    if mode not in TEACHER_INPUT_MODES:
        raise ValueError(f"teacher_input must be one of {TEACHER_INPUT_MODES}, got {mode!r}")
    if not processor_config or mode == "student":
        return None
    processor_config = with_class_defaults(processor_config)
    where = f"{teacher_name}/preprocessor_config.json"
    teacher = PixelNorm.from_processor_config(processor_config, where)
    resize = ResizeRule.from_processor_config(processor_config, where)
    if mode == "auto" and resize is not None and resize == student_resize:
        resize = None
    enlarge = mode == "processor"
    pad = _pad_size(processor_config) if resize is not None and enlarge else None
    normalises = not teacher.close_to(student)
    if not normalises and resize is None:
        return None
    if normalises:
        log.info("distill.teacher %s: fed pixels normalised its own way (mean %s, std %s%s) from the student's batch",
                 teacher_name, list(teacher.mean), list(teacher.std),
                 "" if teacher.scale == 1.0 else f", scale {teacher.scale:g}")
    if resize is not None and enlarge:
        log.info("distill.teacher %s: fed each augmented image resized by its processor (%s %d x %d%s, "
                 "distill.teacher_input=processor); feature terms sample the student's maps on the teacher's grid",
                 teacher_name, resize.kind, resize.a, resize.b, f", padded to {pad[0]} x {pad[1]}" if pad else "")
    elif resize is not None:
        log.info("distill.teacher %s: its processor resizes to %s %d x %d; distill.teacher_input=auto shrinks larger "
                 "images by that rule and feeds smaller ones at the student's size, never enlarged "
                 "(distill.teacher_input=processor enlarges them, at the teacher's cost)", teacher_name, resize.kind,
                 resize.a, resize.b)
    return TeacherPixels(student, teacher, resize, pad, enlarge=enlarge)


def warn_no_teacher_processor(what: str, name: str) -> None:
    """A teacher loaded from a folder or hub id without a ``preprocessor_config.json`` (never saved beside it, or not
    in the hub cache: ``from_pretrained`` does not fetch it) is fed the student's pixels as they are: say so once."""
    log.warning("%s %s: no preprocessor_config.json (not saved beside the model, or not in the hub cache): it is fed "
                "the student's pixels as they are (ImageNet mean/std); if it was trained on other pixels (e.g. an "
                "RT-DETR checkpoint's [0, 1] pixels), save its image processor beside it or pass teacher_processor=",
                what, name)


def _pixels(shape) -> int:
    return int(shape[-1]) * int(shape[-2])


def step_seconds(teacher_s: float, student_s: float) -> float:
    """A distilled step's seconds from the two forward times: the teacher's forward and the student's forward and
    backward (about 3x its forward)."""
    return teacher_s + 3 * student_s


def log_first_step_cost(student_shape, teacher_shape, teacher_s: float, student_s: float, mode: str,
                        teacher_pixels: "TeacherPixels | None") -> str:
    """Log (and return) the one line of what the teacher costs, from the first batch: both padded input sizes
    ([B, 3, H, W]), the teacher's and the student's measured forward times, the estimated seconds per step
    (teacher forward + 3x the student's: its forward and backward), and when the teacher's view has
    :data:`LARGE_VIEW_RATIO` times the student's pixels or more, a hint naming ``distill.teacher_input``."""
    ratio = _pixels(teacher_shape) / max(1, _pixels(student_shape))
    if teacher_pixels is None or teacher_pixels.resize is None:
        how = "the student's pixels" if teacher_pixels is None else "the student's pixels, normalised its way"
    else:
        how = "resized by its processor" + ("" if teacher_pixels.enlarge else ", never enlarged")
    size = lambda s: " x ".join(str(int(v)) for v in s)  # noqa: E731
    line = (f"distill.teacher input {size(teacher_shape)} ({how}; distill.teacher_input={mode}), student input "
            f"{size(student_shape)}; first batch: teacher forward {teacher_s:.2f} s, student forward {student_s:.2f} s "
            f"-> about {step_seconds(teacher_s, student_s):.2f} s per step (measured: teacher + 3x student forward)")
    if ratio >= LARGE_VIEW_RATIO:
        line += (f"; the teacher's view has {ratio:.0f}x the student's pixels: distill.teacher_input=auto (never "
                 "enlarges) or student (the student's pixels) makes it cheaper")
    log.info("%s", line)
    return line
