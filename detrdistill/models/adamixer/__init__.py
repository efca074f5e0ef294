"""AdaMixer (Gao et al., CVPR 2022) in plain PyTorch as a transformers model: config, operators, stages, model.

:func:`register_adamixer` registers it with transformers' Auto classes (``AutoConfig``,
``AutoModelForObjectDetection``); it is idempotent and has no other effect. Importing this package registers
nothing by itself (``detrdistill.models`` calls it when imported).
"""
from __future__ import annotations

from .configuration_adamixer import AdaMixerConfig
from .modeling_adamixer import (AdaMixerDecoderOutput, AdaMixerForObjectDetection, AdaMixerModel,
                                AdaMixerObjectDetectionOutput, AdaMixerPreTrainedModel)

__all__ = ["AdaMixerConfig", "AdaMixerForObjectDetection", "AdaMixerModel", "AdaMixerPreTrainedModel",
           "AdaMixerDecoderOutput", "AdaMixerObjectDetectionOutput", "register_adamixer"]


def register_adamixer() -> None:
    """Make ``AutoConfig`` / ``AutoModelForObjectDetection`` know model_type ``"adamixer"`` (idempotent)."""
    from transformers import AutoConfig, AutoModelForObjectDetection

    AutoConfig.register(AdaMixerConfig.model_type, AdaMixerConfig, exist_ok=True)
    AutoModelForObjectDetection.register(AdaMixerConfig, AdaMixerForObjectDetection, exist_ok=True)
