"""The tasks the engine trains (see :mod:`detrdistill.engine.task` for the interface): a plain detector
(:class:`DetectionTask`, ``detrdistill train``) or a distillation
(:class:`~detrdistill.distillation.task.DistillTask`, ``detrdistill distill``)."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from detrdistill.config import Config
from detrdistill.engine.task import Task, load_state_strictly
from detrdistill.errors import ConfigError
from detrdistill.models.family_loss import student_criterion

MODES = ("train", "distill")


class DetectionTask(nn.Module):
    """Train one detector with its set loss."""

    def __init__(self, adapter, criterion: nn.Module):
        super().__init__()
        self.adapter, self.criterion = adapter, criterion

    @property
    def student(self):
        return self.adapter

    def forward(self, pixel_values, pixel_mask, targets):
        out = self.adapter(pixel_values, pixel_mask, targets=targets, criterion=self.criterion)
        return out.loss, out.loss_dict

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return ((n, p) for n, p in self.named_parameters() if p.requires_grad)

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        return self.state_dict()

    def load_checkpoint_state_dict(self, state: dict[str, Tensor]) -> None:
        load_state_strictly(self, state)

    def export(self, path: str | Path) -> None:
        self.adapter.save_pretrained(str(path))


def build_task(cfg: Config, id2label: dict[int, str], mode: str) -> Task:
    """``mode``: 'train' (the detector alone) or 'distill' (the detector as a student; see ``cfg.distill``)."""
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import build_model

    if mode not in MODES:
        raise ConfigError(f"unknown task mode {mode!r}; expected one of {MODES}")
    student = get_adapter(build_model(cfg.model, id2label))
    if mode == "train":
        return DetectionTask(student, student_criterion(cfg.loss, student))
    from detrdistill.distillation.task import build_distill_task  # the Python API's DETRDistiller, from the config
    return build_distill_task(cfg, student, id2label)


def task_inputs(cfg: Config, mode: str) -> tuple[tuple[str, str], ...]:
    """(what, local path) of what a ``mode`` run reads besides its data (kept out of its output folder)."""
    if mode != "distill":
        return ()
    from detrdistill.distillation.task import distill_inputs
    return distill_inputs(cfg)


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]
