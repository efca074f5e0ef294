"""The weight of every distillation term over training: a warm-up, then an optional decay to an early stop.

``distill.warmup_steps`` W, ``distill.decay`` (``none`` | ``linear`` | ``cosine``) and ``distill.stop_at`` f (a
fraction of the run's T steps) give, at the 0-based step s::

    warm(s)  = min(1, (s + 1) / W)                 (1 when W = 0)
    stop     = round(f * T)                        (the first step without distillation)
    decay(s) = 1                                   decay = none
             = (stop - s) / (stop - a)             linear, a = min(W, stop): from the end of the warm-up
             = (1 + cos(pi (s - a) / (stop - a))) / 2   cosine
    scale(s) = warm(s) * decay(s) for s < stop, else 0

From ``stop`` on the step is the student's alone: the :class:`~.distiller.Distiller` runs neither the teacher nor a
term, so the rest of the run costs what training the student alone costs. The defaults (W = 0, none, f = 1) are the
official setting: every term at full weight from the first step to the last.
"""
from __future__ import annotations

import math

from ..errors import ConfigError

__all__ = ["term_scale", "needs_total", "stop_step", "schedule_line"]


def needs_total(decay: str, stop_at: float) -> bool:
    """Whether the schedule depends on the run's length (a decay or an early stop)."""
    return decay != "none" or stop_at < 1.0


def stop_step(stop_at: float, total: int) -> int:
    """The first step without distillation (``total`` when ``stop_at`` is 1)."""
    return total if stop_at >= 1.0 else int(round(stop_at * total))


def term_scale(step: int, warmup_steps: int = 0, decay: str = "none", stop_at: float = 1.0,
               total: int | None = None) -> float:
    """Weight in [0, 1] of every distillation term at 0-based ``step`` of a ``total``-step run (see the module
    docstring). ``total`` may be None only when :func:`needs_total` is False; otherwise a one-line ConfigError."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    if not needs_total(decay, stop_at):
        return warm
    if total is None or total <= 0:
        raise ConfigError(f"distill.decay={decay} / distill.stop_at={stop_at} need the run's length: set the "
                          "distiller's total_steps (detrdistill's trainer and DistillationTrainer do it)")
    end = stop_step(stop_at, total)
    if step >= end:
        return 0.0
    start = min(warmup_steps, end)
    if decay == "none" or step < start:
        return warm
    frac = (step - start) / max(end - start, 1)
    if decay == "linear":
        return warm * (1.0 - frac)
    if decay == "cosine":
        return warm * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ConfigError(f"distill.decay={decay!r}: expected none, linear or cosine")


def schedule_line(warmup_steps: int, decay: str, stop_at: float, total: int) -> str | None:
    """One line of the run's start-up block saying when the terms are on (None for full weight throughout)."""
    parts = []
    if warmup_steps:
        parts.append(f"ramp in over steps 1..{min(warmup_steps, total)}")
    if needs_total(decay, stop_at):
        end = stop_step(stop_at, total)
        if decay != "none":
            parts.append(f"fall ({decay}) to 0 at step {end + 1}")
        if end < total:
            parts.append(f"are off from step {end + 1} of {total}: the student trains alone, without the teacher "
                         "(those steps are faster than the estimate below)")
    return f"  distillation terms: {'; '.join(parts)}" if parts else None
