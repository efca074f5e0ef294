"""The one interface between the engine and what it trains: a :class:`Task`.

The engine (optimizer, checkpoints, training loop, export) sees only this interface; what a task holds
besides its deployable model (frozen helpers, loss modules, ...) is the task's business.

A task is an ``nn.Module`` with:

* ``forward(pixel_values, pixel_mask, targets) -> (loss, loss_dict)``: scalar loss with grad, and its
  named components (detached);
* ``student``: the deployable detector adapter (the model that is evaluated and exported);
* ``named_trainable_parameters()``: ``(name, parameter)`` of everything the optimizer updates;
* ``checkpoint_state_dict()`` / ``load_checkpoint_state_dict(state)``: what a resumable checkpoint holds,
  and its strict inverse (raises :class:`~detrdistill.errors.CheckpointError` when the state does not fit);
* ``export(path)``: write the deployable model as a plain transformers model directory;
* optional ``set_step(step, total)``: called before each training step with its 0-based index (restored on
  ``--resume``) and the run's planned length, for schedules inside the task (the distillation warm-up and stop);
* optional ``summary_lines(cfg, total_steps)``: lines the task adds to the run's start-up block (when its terms are on);
* optional ``time_left(step, total, step_s) -> (seconds, note)``: the estimated time of the steps left when they do
  not all cost the step just timed (distillation's steps after ``distill.stop_at`` run without the teacher).

The engine is given the task's *class* (:class:`TaskType`), which says before anything is loaded what kind of run
it is and which models it reads, and builds the task once the output folder is claimed. The CLI and the Python API
choose the class (:class:`~detrdistill.engine.tasks.DetectionTask` for ``train``,
:class:`~detrdistill.distillation.task.DistillTask` for ``distill``); the engine never interprets its name or inputs.

The module functions below give every ``nn.Module`` the same view (all trainable parameters, the whole
state dict), so the engine's helpers also work on a bare module (tests, benchmarks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

from torch import Tensor, nn

from detrdistill.state_loading import load_state_strictly

__all__ = ["Task", "TaskType", "TaskInput", "trainable_named_parameters", "checkpoint_state", "load_checkpoint_state"]


@runtime_checkable
class Task(Protocol):
    """What the engine trains (see the module docstring); implemented by
    :class:`~detrdistill.engine.tasks.DetectionTask` and :class:`~detrdistill.distillation.task.DistillTask`."""

    @property
    def student(self) -> nn.Module: ...

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None,
                 targets: list[dict]) -> tuple[Tensor, dict[str, Tensor]]: ...

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]: ...

    def checkpoint_state_dict(self) -> dict[str, Tensor]: ...

    def load_checkpoint_state_dict(self, state: dict[str, Tensor]) -> None: ...

    def export(self, path: str | Path) -> None: ...


#: ``(what, config key, model name)`` of a model a task reads besides the one it trains, e.g.
#: ``("teacher", "distill.teacher", "runs/teacher/model")``; the name is a local folder or a hub id
TaskInput = tuple[str, str, str]


@runtime_checkable
class TaskType(Protocol):
    """A kind of task, before one is built: a :class:`Task` class with these class-level members.

    * ``name``: ``"train"``, ``"distill"``: recorded in the run folder's ``run.json`` (a run is never resumed as
      another kind), in the start-up block, the progress bar and tracker run names;
    * ``inputs(cfg)``: the :data:`TaskInput` of each model it reads besides the one it trains (a teacher): a local
      one is kept apart from the output folder, each is hashed into the checkpoints (``--resume`` refuses a changed
      one) and named in the start-up block and the model card;
    * ``from_config(cfg, id2label)``: the task for the dataset's classes (loads its models).
    """
    name: str

    def inputs(self, cfg: Any) -> tuple[TaskInput, ...]: ...

    def from_config(self, cfg: Any, id2label: dict[int, str]) -> Task: ...


def trainable_named_parameters(module: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """The task's own answer, or every parameter with ``requires_grad`` of a bare module."""
    if hasattr(module, "named_trainable_parameters"):
        return module.named_trainable_parameters()
    return ((n, p) for n, p in module.named_parameters() if p.requires_grad)


def checkpoint_state(module: nn.Module) -> dict[str, Tensor]:
    """The task's own checkpoint state, or the whole state dict of a bare module."""
    if hasattr(module, "checkpoint_state_dict"):
        return module.checkpoint_state_dict()
    return module.state_dict()


def load_checkpoint_state(module: nn.Module, state: dict[str, Tensor]) -> None:
    """Inverse of :func:`checkpoint_state` (strict: raises CheckpointError on a missing or unexpected key)."""
    if hasattr(module, "load_checkpoint_state_dict"):
        module.load_checkpoint_state_dict(state)
    else:
        load_state_strictly(module, state)
