"""DETRDistill: knowledge distillation for DETR-family detectors."""
__version__ = "0.1.0"
