"""Shared pieces of the ModelConfig -> transformers config mapping, used by the families' ``config_kwargs``."""
from __future__ import annotations

from typing import Any

from ..config import BackboneConfig, ModelConfig
from ..errors import ConfigError

__all__ = ["resnet_config", "common_kwargs"]


def resnet_config(bb: BackboneConfig, num_levels: int, max_levels: int = 3):
    """transformers' own ResNet, returning the last ``num_levels`` stages (at most ``max_levels``; 3 = C3-C5)."""
    from transformers import ResNetConfig

    if len(bb.hidden_sizes) != len(bb.depths):
        raise ConfigError(f"model.backbone: hidden_sizes ({len(bb.hidden_sizes)}) and depths ({len(bb.depths)}) "
                          "must have the same length")
    stages = [f"stage{i + 1}" for i in range(len(bb.depths))]
    n = min(num_levels, max_levels, len(stages))
    return ResNetConfig(
        embedding_size=bb.embedding_size,
        hidden_sizes=list(bb.hidden_sizes),
        depths=list(bb.depths),
        layer_type=bb.layer_type,
        out_features=stages[-n:],
    )


def common_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Keyword arguments every transformers DETR-family config shares (random init, nothing downloaded)."""
    return dict(
        num_queries=cfg.num_queries,
        decoder_layers=cfg.decoder_layers,
        encoder_layers=cfg.encoder_layers,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        dropout=cfg.dropout,
        auxiliary_loss=False,
        use_pretrained_backbone=False,  # consumed by older configs; never download weights
        use_timm_backbone=False,
    )
