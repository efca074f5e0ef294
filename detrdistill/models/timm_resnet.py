"""timm ResNet checkpoints (``timm/resnet50.a1_in1k`` and the like) as a transformers ResNet, without timm.

timm cannot be a dependency here (it requires torchvision, whose wheel does not import with the pinned torch), yet
its hub checkpoints are plain: ``config.json`` with ``"architecture": "resnet50"`` and a ``model.safetensors`` in
timm's parameter names. The plain ResNets (``resnet18/34/50/101/152``: 7x7 stem, max-pool, stride on the 3x3 conv of
a bottleneck, 1x1 conv + BN shortcuts) are the same network as transformers' ``ResNetBackbone`` with default
settings, so the weights only need renaming:

===============================================  =====================================================
timm                                             transformers ``ResNetBackbone``
===============================================  =====================================================
``conv1`` / ``bn1``                              ``embedder.embedder.convolution`` / ``.normalization``
``layer{s}.{b}.conv{k}`` / ``.bn{k}``            ``encoder.stages.{s-1}.layers.{b}.layer.{k-1}.convolution`` / ``.normalization``
``layer{s}.{b}.downsample.0`` / ``.1``           ``encoder.stages.{s-1}.layers.{b}.shortcut.convolution`` / ``.normalization``
``fc``                                           (dropped: classifier)
===============================================  =====================================================

Variants with another stem or shortcut (``resnet50d``, ``resnet26t``, ``seresnet``...) are refused by name.
"""
from __future__ import annotations

import re

from torch import Tensor

from ..errors import ModelError

__all__ = ["TIMM_RESNETS", "is_timm_config", "timm_resnet_arch", "timm_to_transformers_state"]

# architecture -> (depths, layer_type); hidden sizes follow from the block type
TIMM_RESNETS = {
    "resnet18": ([2, 2, 2, 2], "basic"),
    "resnet34": ([3, 4, 6, 3], "basic"),
    "resnet50": ([3, 4, 6, 3], "bottleneck"),
    "resnet101": ([3, 4, 23, 3], "bottleneck"),
    "resnet152": ([3, 8, 36, 3], "bottleneck"),
}
_HIDDEN = {"basic": [64, 128, 256, 512], "bottleneck": [256, 512, 1024, 2048]}

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(conv|bn)([1-3])\.(.+)$")
_SHORTCUT = re.compile(r"^layer([1-4])\.(\d+)\.downsample\.([01])\.(.+)$")
_STEM = re.compile(r"^(conv1|bn1)\.(.+)$")


def is_timm_config(cfg: dict) -> bool:
    """A timm hub ``config.json`` (``architecture`` + ``pretrained_cfg``/``num_features``, no ``model_type``)."""
    return "architecture" in cfg and "model_type" not in cfg


def timm_resnet_arch(cfg: dict, name: str) -> dict:
    """``{embedding_size, hidden_sizes, depths, layer_type}`` of the timm ResNet ``cfg`` describes."""
    arch = str(cfg.get("architecture"))
    if arch not in TIMM_RESNETS:
        raise ModelError(f"model.backbone.pretrained: {name!r} is timm's {arch!r}; only the plain timm ResNets "
                         f"{sorted(TIMM_RESNETS)} can be used without timm (or give a transformers ResNet such as "
                         "microsoft/resnet-50)")
    depths, layer_type = TIMM_RESNETS[arch]
    return {"embedding_size": 64, "hidden_sizes": list(_HIDDEN[layer_type]), "depths": list(depths),
            "layer_type": layer_type}


def timm_to_transformers_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """timm ResNet state dict -> ``ResNetBackbone`` state dict (classifier dropped; unknown names are an error)."""
    out: dict[str, Tensor] = {}
    unknown = []
    for key, value in state.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        if m := _STEM.match(key):
            part = "convolution" if m[1] == "conv1" else "normalization"
            out[f"embedder.embedder.{part}.{m[2]}"] = value
        elif m := _BLOCK.match(key):
            part = "convolution" if m[3] == "conv" else "normalization"
            out[f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.layer.{int(m[4]) - 1}.{part}.{m[5]}"] = value
        elif m := _SHORTCUT.match(key):
            part = "convolution" if m[3] == "0" else "normalization"
            out[f"encoder.stages.{int(m[1]) - 1}.layers.{m[2]}.shortcut.{part}.{m[4]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ModelError(f"model.backbone.pretrained: timm weights with names a plain ResNet does not have "
                         f"({unknown[:3]}); is it a ResNet variant?")
    return out
