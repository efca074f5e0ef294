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
* ``export(path)``: write the deployable model as a plain transformers model directory.

The module functions below give every ``nn.Module`` the same view (all trainable parameters, the whole
state dict), so the engine's helpers also work on a bare module (tests, benchmarks).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Protocol, runtime_checkable

from torch import Tensor, nn

from detrdistill.errors import CheckpointError

__all__ = ["Task", "trainable_named_parameters", "checkpoint_state", "load_checkpoint_state",
           "load_state_strictly"]


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


def load_state_strictly(module: nn.Module, state: dict[str, Tensor], skip_missing: tuple[str, ...] = ()) -> None:
    """``load_state_dict`` that names what does not fit; keys starting with ``skip_missing`` may be absent."""
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(skip_missing)] if skip_missing else list(missing)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit the model (missing {missing[:3]}, unexpected "
                              f"{list(unexpected)[:3]}); was it written with another config?")
