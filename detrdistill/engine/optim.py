"""Optimizer (AdamW with per-module learning rates) and warmup + step/cosine schedule."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from detrdistill.config import OptimConfig
from detrdistill.engine.task import trainable_named_parameters
from detrdistill.errors import ConfigError
from detrdistill.models.backbone import backbone_parameter_ids

# parameter-name fragments of the parts trained with a lower lr (Deformable DETR convention)
BACKBONE_KEYS = ("backbone",)
LINEAR_PROJ_KEYS = ("sampling_offsets", "reference_points")


def param_groups(task: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Split the task's trainable parameters into backbone / linear-projection / rest groups.

    Each group carries ``lr_mult`` so the scheduler scales all groups alike. Empty groups are dropped.
    """
    groups = {"backbone": [], "linear_proj": [], "rest": []}
    backbone_ids = backbone_parameter_ids(task)  # the transformers backbone wherever a family keeps it
    for name, p in trainable_named_parameters(task):
        # the name rule only for a module no family adapter describes: LW-DETR / RF-DETR keep their neck (the
        # projector) under ``backbone`` in their names, and it trains at the base rate, as the families do
        by_name = not backbone_ids and any(k in name for k in BACKBONE_KEYS) and "query" not in name
        if id(p) in backbone_ids or by_name:
            groups["backbone"].append(p)
        elif any(k in name for k in LINEAR_PROJ_KEYS):
            groups["linear_proj"].append(p)
        else:
            groups["rest"].append(p)
    mult = {"backbone": cfg.backbone_lr_mult, "linear_proj": cfg.linear_proj_lr_mult, "rest": 1.0}
    return [{"params": ps, "lr": cfg.lr * mult[n], "lr_mult": mult[n], "name": n}
            for n, ps in groups.items() if ps]


def build_optimizer(task: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """AdamW over ``task``'s trainable parameters (a :class:`~detrdistill.engine.task.Task` or any module)."""
    groups = param_groups(task, cfg)
    if not groups:
        raise ConfigError("no trainable parameters: check model.backbone.freeze and the config")
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """Multiplier of the base lr at ``step`` (0-based): linear warmup, then the chosen schedule."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return 0.001 + (1 - 0.001) * step / cfg.warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        return cfg.step_gamma if step >= int(cfg.step_at * total_steps) else 1.0
    span = max(1, total_steps - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int | Callable[[], int], cfg: OptimConfig):
    """LambdaLR over ``total_steps`` (an int, or a callable read at every step: a time-budgeted run fixes
    its length after measuring its first steps)."""
    total = total_steps if callable(total_steps) else (lambda: total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, total(), cfg))
