"""DETRDistill: knowledge distillation for DETR-family detectors.

The Python API (docs/api.md)::

    from detrdistill import DETRDistiller, DistillConfig
    distiller = DETRDistiller("PekingU/rtdetr_r50vd", my_student, DistillConfig())
    out = distiller(pixel_values, pixel_mask=pixel_mask, labels=labels)   # out.loss, out.losses
    out.loss.backward()
    distiller.save_student("runs/student")

and, for transformers' ``Trainer`` recipe, :class:`DistillationTrainer`. Importing the package loads nothing heavy:
each public name is imported on first use.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access, PEP 562)
_PUBLIC = {
    "DETRDistiller": "detrdistill.distillation.detr_distiller",
    "DETRDistillerOutput": "detrdistill.distillation.detr_distiller",
    "DistillConfig": "detrdistill.config",
    "LossConfig": "detrdistill.config",
    "DistillationTrainer": "detrdistill.integrations.trainer",
    "coco_to_labels": "detrdistill.data.labels",
    "DetrDistillError": "detrdistill.errors",
}

__all__ = ["__version__", *_PUBLIC]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .config import DistillConfig, LossConfig
    from .data.labels import coco_to_labels
    from .distillation.detr_distiller import DETRDistiller, DETRDistillerOutput
    from .errors import DetrDistillError
    from .integrations.trainer import DistillationTrainer


def __getattr__(name: str):
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'detrdistill' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
