"""Adapter dispatch: ``get_adapter(model_or_cfg)`` returns the :class:`DetectorAdapter` of the model's family.

Dispatch is on ``model.config.model_type`` through the family registry (:mod:`detrdistill.models.families`):
every module of this package may declare ``FAMILY_SPECS``; a module that fails to import raises its own error.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ModelError, NoQueryTableError, UnsupportedFamilyError
from ..families import family_names, family_of, family_spec
from .base import DetectorAdapter

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...config import ModelConfig

__all__ = ["DetectorAdapter", "UnsupportedFamilyError", "NoQueryTableError", "get_adapter", "adapter_class",
           "registered_families", "family_of"]


def adapter_class(family_or_model_type: str) -> type[DetectorAdapter] | None:
    """The adapter class for a family (or a saved model's ``model_type``), or None when unknown."""
    family = family_of(family_or_model_type) or family_or_model_type
    if family not in family_names():
        return None
    return family_spec(family).adapter


def registered_families() -> tuple[str, ...]:
    """The families in the registry (each has its adapter)."""
    return family_names()


def get_adapter(model_or_cfg: "nn.Module | ModelConfig", id2label: dict[int, str] | None = None) -> DetectorAdapter:
    """Wrap a detector (or build one from a :class:`~detrdistill.config.ModelConfig`) in its family's adapter.

    ``id2label`` is only used when a ModelConfig is given (see :func:`detrdistill.models.build.build_model`).
    Raises :class:`UnsupportedFamilyError` when the model's ``config.model_type`` has no adapter.
    """
    from ...config import ModelConfig as _ModelConfig

    if isinstance(model_or_cfg, _ModelConfig):
        from ..build import build_model

        if id2label is None and not model_or_cfg.pretrained:
            raise ModelError("get_adapter(ModelConfig) needs id2label to build a model from scratch")
        model = build_model(model_or_cfg, id2label)
    else:
        model = model_or_cfg
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedFamilyError(
            f"{type(model).__name__} is not a transformers model (no config.model_type); "
            f"supported families: {', '.join(registered_families())}")
    family = family_of(model_type)
    if family is None:
        raise UnsupportedFamilyError(
            f"no detector adapter for model_type {model_type!r} ({type(model).__name__}); "
            f"supported families: {', '.join(registered_families())}")
    return family_spec(family).adapter(model)
