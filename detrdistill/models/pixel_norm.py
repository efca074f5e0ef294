"""How a model's image processor turns a [0, 1] image into its input (:class:`PixelNorm`), read from its
``preprocessor_config.json`` with the settings the file leaves out taken from the processor class it names, as
transformers does (:func:`with_class_defaults`); and the warning for a checkpoint fine-tuned on pixels normalised
otherwise than it was trained on (:func:`warn_pretrained_pixels`). Used by the teacher's view
(:mod:`detrdistill.distillation.teacher_pixels`) and by training from ``model.pretrained``."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from ..errors import ModelError

log = logging.getLogger("detrdistill")

__all__ = ["PixelNorm", "with_class_defaults", "warn_pretrained_pixels"]


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


#: the processor settings a missing key takes from the class the file names (as transformers fills them)
_PROCESSOR_KEYS = ("do_normalize", "do_rescale", "rescale_factor", "image_mean", "image_std", "do_resize", "size",
                   "do_pad", "pad_size")


def with_class_defaults(d: dict) -> dict:
    """``preprocessor_config.json`` ``d`` with each missing setting filled from the transformers processor class it
    names (``image_processor_type`` / ``feature_extractor_type``), as transformers does when it loads the file (an
    RT-DETR processor without ``do_normalize`` does NOT normalise); ``d`` itself when the class is unknown."""
    import transformers

    name = d.get("image_processor_type") or d.get("feature_extractor_type")
    cls = None
    for cand in (name, (name or "").removesuffix("Fast"), (name or "").replace("FeatureExtractor", "ImageProcessor")):
        cls = getattr(transformers, cand, None) if cand else None
        if cls is not None:
            break
    if cls is None:
        return d
    filled = dict(d)
    for key in _PROCESSOR_KEYS:
        default = getattr(cls, key, None)
        if key not in filled and default is not None and not callable(default):
            filled[key] = default
    return filled


def warn_pretrained_pixels(pretrained, what: str = "model.pretrained") -> bool:
    """A checkpoint fine-tuned here (``model.pretrained``: a name, or the
    :class:`~detrdistill.models.pretrained.ModelSource` it was already resolved to) whose
    ``preprocessor_config.json`` normalises pixels otherwise than the data pipeline (ImageNet mean / std of [0, 1]
    pixels) is trained on inputs its first layers never saw: warn once, naming both. Returns whether it warned
    (False: no checkpoint, no file, or the same)."""
    if not pretrained:
        return False
    from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from .pretrained import ModelSource, resolve_model

    source = pretrained if isinstance(pretrained, ModelSource) else resolve_model(pretrained, what=what)
    pretrained = source.name
    config = source.read_json("preprocessor_config.json")
    if not config:
        return False
    ours = PixelNorm(tuple(IMAGENET_MEAN), tuple(IMAGENET_STD), 1.0)
    theirs = PixelNorm.from_processor_config(with_class_defaults(config), f"{pretrained}/preprocessor_config.json")
    if theirs.close_to(ours):
        return False
    log.warning("%s %s was trained on pixels normalised with mean %s, std %s, scale %g; the data pipeline feeds it "
                "ImageNet mean %s / std %s of [0, 1] pixels, so its first layers see other inputs than they were "
                "trained on (fine-tuning adapts them, at some cost in steps or accuracy)", what, pretrained,
                [round(v, 3) for v in theirs.mean], [round(v, 3) for v in theirs.std], theirs.scale,
                list(IMAGENET_MEAN), list(IMAGENET_STD))
    return True
