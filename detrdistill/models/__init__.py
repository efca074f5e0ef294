"""Model layer: build transformers DETR-family detectors and view them through typed adapters."""
from .adapters import DetectorAdapter, UnsupportedFamilyError, get_adapter, registered_families
from .build import SUPPORTED_FAMILIES, build_model, count_parameters, load_detector
from .outputs import DetectorOutput, GroupOutput, QueryGroup, class_probs
from .query_projection import QueryProjection, build_query_projection
from .adamixer import register_adamixer

register_adamixer()  # AutoConfig / AutoModelForObjectDetection learn model_type "adamixer" (nothing else)

__all__ = [
    "DetectorAdapter", "UnsupportedFamilyError", "get_adapter", "registered_families",
    "SUPPORTED_FAMILIES", "build_model", "count_parameters", "load_detector",
    "DetectorOutput", "GroupOutput", "QueryGroup", "class_probs",
    "QueryProjection", "build_query_projection",
]
