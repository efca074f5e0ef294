"""AdaMixer's feature pyramid: transformers' ResNet (``load_backbone``, BatchNorm frozen as in every DETR family
of transformers) and a light neck (1x1 conv + GroupNorm per stage to ``d_model`` channels, stride-2 3x3 convs on the
last output for any extra level). AdaMixer has no encoder: the neck outputs are the multi-scale features.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers.backbone_utils import load_backbone

from .configuration_adamixer import AdaMixerConfig

__all__ = ["FrozenBatchNorm2d", "AdaMixerBackbone", "AdaMixerNeck", "freeze_batch_norms"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (buffers): ``(x - mean) / sqrt(var + eps) * w + b``."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def freeze_batch_norms(module: nn.Module) -> None:
    """Replace every ``nn.BatchNorm2d`` below ``module`` by a :class:`FrozenBatchNorm2d` holding its statistics."""
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            frozen = FrozenBatchNorm2d(child.num_features, child.eps)
            with torch.no_grad():
                for key in ("weight", "bias", "running_mean", "running_var"):
                    getattr(frozen, key).copy_(getattr(child, key))
            setattr(module, name, frozen)
        else:
            freeze_batch_norms(child)


class AdaMixerBackbone(nn.Module):
    """``self.model`` is transformers' ResNet backbone; ``strides`` the nominal stride of each returned stage."""

    def __init__(self, config: AdaMixerConfig):
        super().__init__()
        self.model = load_backbone(config)
        freeze_batch_norms(self.model)
        bb = config.backbone_config
        first = 2 if getattr(bb, "downsample_in_first_stage", False) else 1
        self.strides = [2 ** (1 + first + bb.stage_names.index(n) - 1) for n in bb.out_features]
        self.channels = list(self.model.channels)

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        return list(self.model(pixel_values).feature_maps)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class AdaMixerNeck(nn.Module):
    """Backbone maps -> ``num_feature_levels`` maps of ``d_model`` channels (fine to coarse)."""

    def __init__(self, in_channels: list[int], d_model: int, num_levels: int):
        super().__init__()
        n_in = min(num_levels, len(in_channels))
        self.skip = len(in_channels) - n_in
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, d_model, kernel_size=1), _group_norm(d_model)) for c in in_channels[self.skip:])
        self.extra = nn.ModuleList(
            nn.Sequential(nn.Conv2d(d_model, d_model, kernel_size=3, stride=2, padding=1), _group_norm(d_model))
            for _ in range(num_levels - n_in))

    def forward(self, maps: list[Tensor]) -> list[Tensor]:
        out = [conv(x) for conv, x in zip(self.lateral, maps[self.skip:])]
        for conv in self.extra:
            out.append(conv(F.relu(out[-1])))
        return out
