"""Model layer: build transformers DETR-family detectors and view them through typed adapters."""
from .adapters import DetectorAdapter, UnsupportedFamilyError, get_adapter, registered_families
from .build import build_model, count_parameters, load_detector, supported_families
from .outputs import DetectorOutput, GroupOutput, QueryGroup, class_probs
from .query_projection import QueryProjection, build_query_projection

__all__ = [
    "DetectorAdapter", "UnsupportedFamilyError", "get_adapter", "registered_families",
    "SUPPORTED_FAMILIES", "supported_families", "build_model", "count_parameters", "load_detector",
    "DetectorOutput", "GroupOutput", "QueryGroup", "class_probs",
    "QueryProjection", "build_query_projection",
]


def __getattr__(name: str):  # SUPPORTED_FAMILIES: read from the family registry when asked for
    if name == "SUPPORTED_FAMILIES":
        return supported_families()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
