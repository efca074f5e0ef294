"""AdaMixer (Gao et al., CVPR 2022) in plain PyTorch as a transformers model: config, operators, stages, model.

transformers does not know AdaMixer. :func:`register_auto_classes` teaches it, explicitly (importing this package
or ``detrdistill`` registers nothing)::

    from detrdistill.models.adamixer import register_auto_classes
    register_auto_classes()
    pipeline("object-detection", model="runs/adamixer/model")   # no trust_remote_code: no code from the folder

The project itself never needs it: it loads AdaMixer folders through the family registry.
"""
from __future__ import annotations

from .configuration_adamixer import AdaMixerConfig
from .modeling_adamixer import (AdaMixerDecoderOutput, AdaMixerForObjectDetection, AdaMixerModel,
                                AdaMixerObjectDetectionOutput, AdaMixerPreTrainedModel)

__all__ = ["AdaMixerConfig", "AdaMixerForObjectDetection", "AdaMixerModel", "AdaMixerPreTrainedModel",
           "AdaMixerDecoderOutput", "AdaMixerObjectDetectionOutput", "register_auto_classes", "register_adamixer"]


def register_auto_classes() -> None:
    """Register AdaMixer with transformers (idempotent): ``AutoConfig`` and ``AutoModelForObjectDetection`` learn
    model_type ``"adamixer"`` (so ``from_pretrained`` and ``pipeline("object-detection", model=folder)`` load it
    with this package's classes, never with code from the folder), and the object-detection pipeline's table of
    supported models lists it (its check reads that static table, not the registered classes, and would log
    "not supported" otherwise). The image processor needs nothing: the folder names a transformers one."""
    from transformers import AutoConfig, AutoModelForObjectDetection
    from transformers.models.auto import modeling_auto

    AutoConfig.register(AdaMixerConfig.model_type, AdaMixerConfig, exist_ok=True)
    AutoModelForObjectDetection.register(AdaMixerConfig, AdaMixerForObjectDetection, exist_ok=True)
    modeling_auto.MODEL_FOR_OBJECT_DETECTION_MAPPING_NAMES.setdefault(
        AdaMixerConfig.model_type, AdaMixerForObjectDetection.__name__)


register_adamixer = register_auto_classes  # the former name
