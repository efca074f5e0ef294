"""The distillation task: the Python API's :class:`~detrdistill.distillation.detr_distiller.DETRDistiller` behind the
engine's task interface (see :mod:`detrdistill.engine.task`; the interface is structural, nothing is imported from
the engine: the class says its ``name`` and the teacher it reads, :meth:`DistillTask.inputs`, before the engine has
built it). ``detrdistill distill`` and ``DETRDistiller`` are one code path: :meth:`DistillTask.from_config` builds
the same object a user builds, from the run's config.

Only the student and the distillation modules are trained, checkpointed and exported; the frozen teacher
is rebuilt from its own directory (``distill.teacher``) and never saved.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from torch import Tensor, nn

from ..config import Config
from ..errors import ConfigError
from .detr_distiller import DETRDistiller

__all__ = ["DistillTask", "teacher_distill_config"]


class DistillTask(nn.Module):
    """Train a student under a frozen teacher; ``forward`` returns ``(loss, loss_dict)``.

    ``detr_distiller`` is the API object; ``distiller`` (the core :class:`~.distiller.Distiller`: teacher, student,
    terms) and ``criterion`` are its parts. Checkpoint keys are ``distiller.*`` / ``criterion.*``."""
    name = "distill"

    def __init__(self, distiller: DETRDistiller):
        super().__init__()
        self.detr_distiller = distiller

    @classmethod
    def inputs(cls, cfg: Config) -> tuple[tuple[str, str, str], ...]:
        """The teacher (``distill.teacher``: a local folder or a hub id), the one model a distillation reads
        besides its student."""
        return (("teacher", "distill.teacher", cfg.distill.teacher),) if cfg.distill.teacher else ()

    @staticmethod
    def summary_lines(cfg: Config, total_steps: int) -> list[str]:
        """The start-up block's lines saying when the distillation terms are on (warm-up, decay, stop) and whether
        their pull on the update is capped (``distill.max_term_ratio``), if either."""
        from .term_schedule import schedule_line
        d = cfg.distill
        line = schedule_line(d.warmup_steps, d.decay, d.stop_at, total_steps)
        lines = [line] if line else []
        if d.max_term_ratio > 0:
            lines.append(f"  term cap: no term's gradient above {d.max_term_ratio:g}x the student's own, measured every "
                         f"{d.term_ratio_every} steps (one extra backward per term then; metrics.jsonl cap/*)")
        return lines

    def time_left(self, step: int, total: int, step_s: float) -> tuple[float, str]:
        """Seconds the steps after ``step`` (done) up to ``total`` take at ``step_s`` a step (the last step's time),
        and a note for the estimate line. The steps from ``distill.stop_at`` on run without the teacher: when the step
        timed still ran it, they are counted at the student's share of a step, 3x its forward over the teacher's
        forward + 3x the student's (both timed on the first distilled batch), e.g. 0.85 s -> 0.39 s."""
        from .teacher_pixels import step_seconds
        from .term_schedule import stop_step
        distiller = self.distiller
        end, left, cost = stop_step(distiller.cfg.stop_at, total), max(0, total - step), distiller.first_step_cost
        if end >= total or step > end or cost is None:  # no stop ahead, or the step timed had no teacher already
            return step_s * left, ""
        step_cost = step_seconds(*cost)
        share = (step_cost - cost[0]) / max(step_cost, 1e-9)  # the student's part of a step
        on, off = max(0, end - step), total - max(step, end)
        return (step_s * (on + off * share),
                f"steps {end + 1}..{total} without the teacher at about {step_s * share:.2f} s")

    @classmethod
    def from_config(cls, cfg: Config, id2label: dict[int, str]) -> "DistillTask":
        """The :class:`DETRDistiller` of a run: the teacher named by ``cfg.distill.teacher`` (resolved once: its
        weights and its ``preprocessor_config.json`` come from the same place), the student of ``cfg.model`` built
        for the dataset's classes, ``cfg.distill`` (teacher in bf16 under bf16 mixed precision), ``cfg.loss``, and
        the student's view = what its exported image processor does (the eval transforms)."""
        from ..export.processor import image_processor_settings
        from ..models.build import build_model, load_detector
        from ..models.families import get_adapter
        from ..models.pretrained import resolve_model

        student = get_adapter(build_model(cfg.model, id2label))  # first: the seed's draws initialise the student
        if not cfg.distill.teacher:
            raise ConfigError("distill.teacher is not set: give the teacher's model directory (--teacher DIR)")
        source = resolve_model(cfg.distill.teacher, what="distill.teacher")
        teacher = load_detector(source, what="distill.teacher")
        processor = source.read_json("preprocessor_config.json")
        if processor is None:
            from .teacher_pixels import warn_no_teacher_processor
            warn_no_teacher_processor("distill.teacher", source.name)
        return cls(DETRDistiller(
            teacher, student, teacher_distill_config(cfg), loss=cfg.loss,
            student_processor=image_processor_settings(cfg.model.family, cfg.data.eval_size, cfg.data.max_size),
            teacher_processor=processor, dataset_id2label=id2label))

    @property
    def distiller(self):
        return self.detr_distiller.distiller

    @property
    def criterion(self) -> nn.Module:
        return self.detr_distiller.criterion

    @property
    def student(self) -> nn.Module:
        return self.detr_distiller.distiller.student

    #: set by the engine for a step whose gradient balance it measures (:mod:`detrdistill.engine.grad_balance`):
    #: that step's loss parts (with grad) are then kept in ``last_parts``
    keep_parts = False
    last_parts = None

    def set_step(self, step: int, total: int | None = None) -> None:
        """The engine's 0-based index of the step about to run and the run's planned length (the distillation
        warm-up, decay and stop, ``distill.warmup_steps`` / ``decay`` / ``stop_at``, follow them; after
        ``--resume`` they continue from the restored step)."""
        self.distiller.step = int(step)
        if total is not None:
            self.distiller.total_steps = int(total)

    @property
    def term_cap(self) -> tuple[float, int] | None:
        """``(distill.max_term_ratio, distill.term_ratio_every)`` when the cap is on, else None (the engine applies
        it: :mod:`detrdistill.engine.term_cap`)."""
        cfg = self.distiller.cfg
        return (cfg.max_term_ratio, cfg.term_ratio_every) if cfg.max_term_ratio > 0 else None

    @property
    def term_weights(self) -> dict[str, float]:
        """Each term's multiplier on top of its schedule (``Distiller.term_weights``; absent = 1)."""
        return dict(self.distiller.term_weights)

    @term_weights.setter
    def term_weights(self, weights: dict[str, float]) -> None:
        self.distiller.term_weights = {str(k): float(v) for k, v in weights.items()}

    def forward(self, pixel_values, pixel_mask, targets):
        out = self.detr_distiller(pixel_values, pixel_mask, labels=targets)
        self.last_parts = out.parts if self.keep_parts else None
        return out.loss, out.losses

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        return self.detr_distiller.named_trainable_parameters()

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        return self.detr_distiller.checkpoint_state_dict()

    def load_checkpoint_state_dict(self, state: dict[str, Tensor]) -> None:
        self.detr_distiller.load_checkpoint_state_dict(state)

    def export(self, path: str | Path) -> None:
        self.detr_distiller.distiller.export_student(str(path))


def teacher_distill_config(cfg: Config):
    """``cfg.distill`` for ``cfg.train.mixed_precision`` (:meth:`~detrdistill.config.DistillConfig.for_mixed_precision`:
    the teacher in bf16 under bf16 unless ``distill.teacher_dtype`` was set explicitly)."""
    return cfg.distill.for_mixed_precision(cfg.train.mixed_precision)
