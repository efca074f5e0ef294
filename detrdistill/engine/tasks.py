"""The engine's own task (see :mod:`detrdistill.engine.task` for the interface): a plain detector
(:class:`DetectionTask`, ``detrdistill train``). A distillation is :class:`~detrdistill.distillation.task.DistillTask`,
which the CLI and the API hand to the engine the same way."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import torch
from torch import Tensor, nn

from detrdistill.config import Config
from detrdistill.engine.task import TaskInput
from detrdistill.state_loading import load_state_strictly
from detrdistill.models.family_loss import student_criterion


class DetectionTask(nn.Module):
    """Train one detector with its set loss (``detrdistill train``)."""
    name = "train"

    def __init__(self, adapter, criterion: nn.Module):
        super().__init__()
        self.adapter, self.criterion = adapter, criterion

    @classmethod
    def inputs(cls, cfg: Config) -> tuple[TaskInput, ...]:
        return ()

    @classmethod
    def from_config(cls, cfg: Config, id2label: dict[int, str]) -> "DetectionTask":
        """The detector of ``cfg.model`` for the dataset's classes and its criterion under ``cfg.loss``."""
        from detrdistill.models.build import build_model
        from detrdistill.models.families import get_adapter

        student = get_adapter(build_model(cfg.model, id2label))
        return cls(student, student_criterion(cfg.loss, student))

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


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]
