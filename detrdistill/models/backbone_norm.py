"""The ``model.backbone.batch_norm`` policy: frozen BatchNorm (transformers' default) or trained BatchNorm.

transformers replaces every BatchNorm of a DETR-family ResNet backbone by a ``*FrozenBatchNorm2d``: fixed affine
parameters and fixed statistics, the right thing for a pretrained backbone whose statistics were learned on
ImageNet. A backbone trained from scratch has no such statistics: its frozen layers hold weight 1, bias 0, mean 0,
variance 1, an identity, so the ResNet trains without any normalisation. ``batch_norm: train`` swaps each frozen
layer for a ``nn.BatchNorm2d`` (batch statistics in training, running statistics in evaluation) that starts from the
frozen layer's values. Its state dict has the frozen layer's keys plus ``num_batches_tracked``, which the frozen
classes drop on load, so a saved model loads back into the family's own class, frozen at the statistics it learned
(what evaluation uses anyway).

Statistics are per process (no SyncBatchNorm): with several GPUs each normalises over its own batch.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from .backbone import backbone_module, stem_prefix

__all__ = ["is_frozen_batch_norm", "train_backbone_batch_norms", "apply_batch_norm_policy"]

_FROZEN_BUFFERS = ("weight", "bias", "running_mean", "running_var")


def is_frozen_batch_norm(module: nn.Module) -> bool:
    """A frozen BatchNorm of transformers (``DetrFrozenBatchNorm2d``, ``RTDetrFrozenBatchNorm2d``, ...) or of this
    package: a ``*FrozenBatchNorm2d`` holding weight, bias and running statistics as buffers."""
    buffers = dict(module.named_buffers(recurse=False))
    return type(module).__name__.endswith("FrozenBatchNorm2d") and all(k in buffers for k in _FROZEN_BUFFERS)


@torch.no_grad()
def train_backbone_batch_norms(model: nn.Module, keep_stem: bool = False) -> int:
    """Swap every frozen BatchNorm of ``model``'s backbone for a trainable ``nn.BatchNorm2d`` with the same values
    (same device and dtype; in the backbone's current train / eval mode); the number swapped. ``keep_stem`` leaves
    the stem's norms frozen (``freeze: stem``: its parameters fixed, so its statistics must not move either)."""
    backbone = backbone_module(model)
    stem = stem_prefix(backbone) if keep_stem else None
    swaps = [(parent, name, child) for pname, parent in backbone.named_modules()
             for name, child in parent.named_children()
             if is_frozen_batch_norm(child) and not (stem and f"{pname}.{name}.".lstrip(".").startswith(stem))]
    for parent, name, frozen in swaps:
        n = frozen.running_mean.numel()
        bn = nn.BatchNorm2d(n, eps=float(getattr(frozen, "eps", 1e-5))).to(frozen.running_mean)
        bn.weight.copy_(frozen.weight)
        bn.bias.copy_(frozen.bias)
        bn.running_mean.copy_(frozen.running_mean)
        bn.running_var.copy_(frozen.running_var)
        bn.train(frozen.training)
        setattr(parent, name, bn)
    return len(swaps)


def apply_batch_norm_policy(model: nn.Module, policy: str, freeze: str) -> int:
    """``model.backbone.batch_norm``: ``"frozen"`` leaves the model as transformers built it, ``"train"`` swaps its
    frozen backbone BatchNorms (:func:`train_backbone_batch_norms`; with ``freeze: stem`` all but the stem's, which
    stays fixed, statistics included); the number swapped. ``"train"`` with ``model.backbone.freeze: all`` is
    refused (nothing of that backbone trains)."""
    if policy not in ("frozen", "train"):
        raise ConfigError(f"model.backbone.batch_norm must be 'frozen' or 'train', got {policy!r}")
    if policy == "frozen":
        return 0
    if freeze == "all":
        raise ConfigError("model.backbone.batch_norm: train needs a backbone that trains, but model.backbone.freeze "
                          "is 'all'; set freeze to 'none' or 'stem', or batch_norm to 'frozen'")
    return train_backbone_batch_norms(model, keep_stem=freeze == "stem")
