"""The distillation task: a :class:`~detrdistill.distillation.distiller.Distiller` behind the engine's task
interface (see :mod:`detrdistill.engine.task`; the interface is structural, nothing is imported from the engine).

Only the student and the distillation modules are trained, checkpointed and exported; the frozen teacher
is rebuilt from its own directory (``distill.teacher``) and never saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from torch import Tensor, nn

from ..config import Config
from ..errors import CheckpointError, ConfigError
from .distiller import Distiller

__all__ = ["DistillTask", "build_distill_task"]


class DistillTask(nn.Module):
    """Train a student under a frozen teacher; ``forward`` returns ``(loss, loss_dict)``."""

    def __init__(self, distiller: Distiller, criterion: nn.Module):
        super().__init__()
        self.distiller, self.criterion = distiller, criterion

    @property
    def student(self) -> nn.Module:
        return self.distiller.student

    def forward(self, pixel_values, pixel_mask, targets):
        out = self.distiller(pixel_values, pixel_mask, targets, self.criterion)
        return out.loss, out.loss_dict

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self.distiller.named_trainable_parameters():
            yield f"distiller.{name}", p
        for name, p in self.criterion.named_parameters():
            if p.requires_grad:
                yield f"criterion.{name}", p

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        state = {f"distiller.{k}": v for k, v in self.distiller.checkpoint_state_dict().items()}
        state.update({f"criterion.{k}": v for k, v in self.criterion.state_dict().items()})
        return state

    def load_checkpoint_state_dict(self, state: dict[str, Tensor]) -> None:
        own = {k[len("distiller."):]: v for k, v in state.items() if k.startswith("distiller.")}
        rest = {k[len("criterion."):]: v for k, v in state.items() if k.startswith("criterion.")}
        stray = [k for k in state if not k.startswith(("distiller.", "criterion."))]
        if stray:
            raise CheckpointError(f"checkpoint does not fit the model (unexpected {stray[:3]}); "
                                  "was it written with another config?")
        self.distiller.load_checkpoint_state_dict(own)
        self.criterion.load_state_dict(rest)

    def export(self, path: str | Path) -> None:
        self.distiller.export_student(str(path))


def build_distill_task(cfg: Config, student, criterion: nn.Module, id2label: dict[int, str]) -> DistillTask:
    """Load the teacher named by ``cfg.distill.teacher`` and wrap teacher + ``student`` in a DistillTask."""
    from ..models.adapters import get_adapter
    from ..models.build import load_detector

    if not cfg.distill.teacher:
        raise ConfigError("distill.teacher is not set: give the teacher's model directory (--teacher DIR)")
    teacher = get_adapter(load_detector(cfg.distill.teacher, what="distill.teacher"))
    return DistillTask(Distiller(teacher, student, teacher_distill_config(cfg), dataset_id2label=id2label,
                                 teacher_pixels=_teacher_pixels(cfg.distill.teacher, cfg)), criterion)


def distill_inputs(cfg: Config) -> tuple[tuple[str, str], ...]:
    """The local teacher folder a distillation reads (a hub id has no local path to protect)."""
    teacher = cfg.distill.teacher
    return (("teacher", teacher),) if teacher and Path(teacher).expanduser().exists() else ()


def teacher_distill_config(cfg: Config):
    """``cfg.distill``, with the teacher in bf16 when training in bf16 mixed precision and ``distill.teacher_dtype``
    was not set explicitly (a float32 teacher under a bf16 student would be the slowest part of the step)."""
    dcfg = cfg.distill
    if cfg.train.mixed_precision == "bf16" and "teacher_dtype" not in dcfg.model_fields_set:
        return dcfg.model_copy(update={"teacher_dtype": "bfloat16"})
    return dcfg


def _teacher_pixels(teacher: str, cfg: Config | None = None):
    """The teacher's own view (normalisation, resizing) when its preprocessor_config.json asks for one that the
    data pipeline's does not give (``distill.teacher_input``); None = the student's pixels as they are."""
    from ..export.processor import image_processor_settings
    from ..models.pretrained import resolve_model
    from .teacher_pixels import PixelNorm, ResizeRule, build_teacher_pixels

    cfg = cfg if cfg is not None else Config()
    source = resolve_model(teacher, what="distill.teacher", check_weights=False)
    # the student's view is what its own exported processor would do (the eval transforms)
    student = image_processor_settings(cfg.model.family, cfg.data.eval_size, cfg.data.max_size)
    return build_teacher_pixels(source.read_json("preprocessor_config.json"), PixelNorm.from_processor_config(student),
                                teacher_name=source.name, student_resize=ResizeRule.from_processor_config(student),
                                mode=cfg.distill.teacher_input)
