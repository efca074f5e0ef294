"""Model layer: build transformers DETR-family detectors and view them through typed adapters.

The names below are imported on first use (PEP 562): importing a light submodule (``detrdistill.models.family_index``,
read by config validation) must not import torch or transformers.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "DetectorAdapter": ".adapters.base",
    "family_names": ".families", "get_adapter": ".families",
    "build_model": ".build", "count_parameters": ".build", "load_detector": ".build",
    "DetectorOutput": ".outputs", "GroupOutput": ".outputs", "QueryGroup": ".outputs", "class_probs": ".outputs",
    "QueryProjection": ".query_projection", "build_query_projection": ".query_projection",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
