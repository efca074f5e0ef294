"""Adapter registry: ``get_adapter(model_or_cfg)`` returns the :class:`DetectorAdapter` of the model's family.

Dispatch is on ``model.config.model_type``. Adapters are imported lazily (one module per family): a family whose
module does not exist is simply not registered (:func:`registered_families` tells which are) and asking for it
raises :class:`UnsupportedFamilyError`; a module that exists but fails to import raises its own error.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .base import DetectorAdapter, NoQueryTableError, UnsupportedFamilyError

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ...config import ModelConfig

__all__ = ["DetectorAdapter", "UnsupportedFamilyError", "NoQueryTableError", "get_adapter", "adapter_class",
           "registered_families",
           "family_of", "ADAPTER_REGISTRY", "MODEL_TYPE_TO_FAMILY"]

# our family name -> (adapter module, class name, transformers config.model_type values it handles)
ADAPTER_REGISTRY: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "deformable_detr": ("deformable_detr", "DeformableDetrAdapter", ("deformable_detr",)),
    "detr": ("detr", "DetrAdapter", ("detr",)),
    "conditional_detr": ("conditional_detr", "ConditionalDetrAdapter", ("conditional_detr",)),
    "dab_detr": ("dab_detr", "DabDetrAdapter", ("dab-detr",)),  # transformers spells it with a hyphen
    "rt_detr": ("rt_detr", "RTDetrAdapter", ("rt_detr",)),
    "rt_detr_v2": ("rt_detr", "RTDetrAdapter", ("rt_detr_v2",)),
    "adamixer": ("adamixer", "AdaMixerAdapter", ("adamixer",)),  # our own model (detrdistill.models.adamixer)
}
MODEL_TYPE_TO_FAMILY: dict[str, str] = {mt: fam for fam, (_, _, mts) in ADAPTER_REGISTRY.items() for mt in mts}

_import_errors: dict[str, str] = {}


def family_of(model_type: str) -> str | None:
    """Our family name for a transformers ``config.model_type`` (None when not a supported family)."""
    return MODEL_TYPE_TO_FAMILY.get(model_type)


def adapter_class(family_or_model_type: str) -> type[DetectorAdapter] | None:
    """The adapter class for a family (or transformers model_type), or None when unknown / not importable."""
    family = MODEL_TYPE_TO_FAMILY.get(family_or_model_type, family_or_model_type)
    entry = ADAPTER_REGISTRY.get(family)
    if entry is None:
        return None
    module_name, cls_name, _ = entry
    try:
        module = importlib.import_module(f"{__name__}.{module_name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{module_name}":
            raise  # the adapter module exists but one of ITS imports is missing: a real bug, not "not written yet"
        _import_errors[family] = f"module {module_name}.py not found"
        return None
    cls = getattr(module, cls_name, None)
    if cls is None:
        _import_errors[family] = f"{module_name}.py defines no {cls_name}"
    return cls


def registered_families() -> tuple[str, ...]:
    """The families that currently have an importable adapter."""
    return tuple(f for f in ADAPTER_REGISTRY if adapter_class(f) is not None)


def get_adapter(model_or_cfg: "nn.Module | ModelConfig", id2label: dict[int, str] | None = None) -> DetectorAdapter:
    """Wrap a transformers detector (or build one from a :class:`~detrdistill.config.ModelConfig`) in its adapter.

    ``id2label`` is only used when a ModelConfig is given (see :func:`detrdistill.models.build.build_model`).
    Raises :class:`UnsupportedFamilyError` when the model's ``config.model_type`` has no adapter.
    """
    from ...config import ModelConfig as _ModelConfig

    if isinstance(model_or_cfg, _ModelConfig):
        from ..build import build_model

        if id2label is None and not model_or_cfg.pretrained:
            raise ValueError("get_adapter(ModelConfig) needs id2label to build a model from scratch")
        model = build_model(model_or_cfg, id2label)
    else:
        model = model_or_cfg
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise UnsupportedFamilyError(
            f"{type(model).__name__} is not a transformers model (no config.model_type); "
            f"supported families: {', '.join(registered_families())}")
    family = family_of(model_type)
    cls = adapter_class(family) if family is not None else None
    if cls is None:
        why = f" ({_import_errors[family]})" if family in _import_errors else ""
        raise UnsupportedFamilyError(
            f"no detector adapter for model_type {model_type!r} ({type(model).__name__}){why}; "
            f"supported families: {', '.join(registered_families())}")
    return cls(model)
