"""What the engine trains: a plain detector or a teacher->student distiller, behind one interface.

A task is an ``nn.Module`` whose ``forward(pixel_values, pixel_mask, targets)`` returns
``(loss, loss_dict)``, with ``.student`` (the adapter that is evaluated) and ``export(path)``
(writes a plain transformers model directory).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from detrdistill.config import Config
from detrdistill.errors import ConfigError
from detrdistill.ops.criterion import SetCriterion


def build_criterion(cfg: Config, adapter) -> SetCriterion:
    class_loss = "ce" if adapter.class_activation == "softmax" else "focal"
    return SetCriterion.from_config(cfg.loss, adapter.num_classes, class_loss)


class DetectionTask(nn.Module):
    """Train one detector with its set loss."""

    def __init__(self, adapter, criterion: SetCriterion):
        super().__init__()
        self.adapter, self.criterion = adapter, criterion

    @property
    def student(self):
        return self.adapter

    def forward(self, pixel_values, pixel_mask, targets):
        out = self.adapter(pixel_values, pixel_mask, targets=targets, criterion=self.criterion)
        return out.loss, out.loss_dict

    def export(self, path: str | Path) -> None:
        self.adapter.save_pretrained(str(path))


class DistillTask(nn.Module):
    """Train a student under a frozen teacher (see :mod:`detrdistill.distillation.distiller`)."""

    def __init__(self, distiller, criterion: SetCriterion):
        super().__init__()
        self.distiller, self.criterion = distiller, criterion

    @property
    def student(self):
        return self.distiller.student

    def forward(self, pixel_values, pixel_mask, targets):
        out = self.distiller(pixel_values, pixel_mask, targets, self.criterion)
        return out.loss, out.loss_dict

    def export(self, path: str | Path) -> None:
        self.distiller.export_student(str(path))

    def state_dict(self, *args, **kwargs):  # the frozen teacher is rebuilt from its checkpoint, never saved
        sd = super().state_dict(*args, **kwargs)
        for k in [k for k in sd if k.startswith("distiller.teacher.")]:
            del sd[k]
        return sd


def build_task(cfg: Config, id2label: dict[int, str], mode: str) -> nn.Module:
    """``mode``: 'train' (detector alone) or 'distill' (needs ``cfg.distill.teacher``)."""
    from detrdistill.models.adapters import get_adapter
    from detrdistill.models.build import build_model

    student = get_adapter(build_model(cfg.model, id2label))
    criterion = build_criterion(cfg, student)
    if mode == "train":
        return DetectionTask(student, criterion)
    from detrdistill.distillation.distiller import Distiller
    from detrdistill.models.build import load_detector

    if not cfg.distill.teacher:
        raise ConfigError("distill.teacher is not set: give the teacher's model directory (--teacher DIR)")
    teacher = get_adapter(load_detector(cfg.distill.teacher))
    distiller = Distiller(teacher, student, cfg.distill, dataset_id2label=id2label)
    return DistillTask(distiller, criterion)


def move_targets(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}
            for t in targets]
