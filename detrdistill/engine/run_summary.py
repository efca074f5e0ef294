"""What a run is about to do, said once before its first step, and how long it will take, said after its second.

:func:`summary_lines` is the start-up block (logged before the first step)::

    train runs/synthetic: 160 train images, 40 val images; 8 per batch, 20 steps per epoch
      model deformable_detr: 0.61 M parameters (0.61 M trained)
      device cpu, 2 threads, 1 process, float32; output folder runs/synthetic
      steps 1..80 of 80 (4 epochs); metrics every 5 steps, evaluation every 2 epochs
      estimated time: logged after the 2nd step (from the step times measured)

and :func:`estimate_line` the line that completes it once two steps are measured::

    estimated time: step 1 took 0.92 s (warm-up included), step 2 0.31 s -> about 24 s for the 78 steps left
    (evaluations not included)
"""
from __future__ import annotations

import torch

__all__ = ["summary_lines", "estimate_line", "parameter_counts", "duration"]


def _millions(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def parameter_counts(task) -> dict[str, int]:
    """``student`` (all its parameters), ``trained`` (every parameter the optimizer updates: the student's and a
    distillation's connectors / heads) and ``frozen_other`` (frozen parameters outside the student: the teacher)."""
    student = {id(p): p for p in task.student.parameters()}
    trained = sum(p.numel() for _, p in task.named_trainable_parameters())
    other = {id(p): p for p in task.parameters() if id(p) not in student and not p.requires_grad}
    return {"student": sum(p.numel() for p in student.values()), "trained": trained,
            "frozen_other": sum(p.numel() for p in other.values())}


def summary_lines(cfg, out_dir, train_images: int, val_images: int | None, steps_per_epoch: int,
                  start_step: int, total_steps: int, task, accelerator) -> list[str]:
    """The start-up block (see the module docstring), one string per line; ``task``: the built task (its
    ``name`` and ``inputs``, see :class:`~detrdistill.engine.task.TaskType`)."""
    counts = parameter_counts(task)
    val = f"{val_images} val images" if val_images is not None else "no val split"
    lines = [f"{task.name} {out_dir}: {train_images} train images, {val}; {cfg.train.batch_size} per batch"
             f"{f' x {accelerator.num_processes} processes' if accelerator.num_processes > 1 else ''}, "
             f"{steps_per_epoch} steps per epoch"]
    model = f"  model {cfg.model.family}: {_millions(counts['student'])} parameters ({_millions(counts['trained'])} trained)"
    inputs = task.inputs(cfg)
    if inputs:  # the models the task reads besides the student (a teacher): frozen
        named = ", ".join(f"{what} {name}" for what, _, name in inputs)
        model += f"; {named}: {_millions(counts['frozen_other'])} parameters (frozen)"
    lines.append(model)
    device = accelerator.device
    n = torch.get_num_threads()
    threads = f", {n} thread{'s' if n != 1 else ''}" if device.type == "cpu" else ""
    precision = {"no": "float32"}.get(str(accelerator.mixed_precision), str(accelerator.mixed_precision))
    lines.append(f"  device {device}{threads}, {accelerator.num_processes} process"
                 f"{'es' if accelerator.num_processes > 1 else ''}, {precision}; output folder {out_dir}")
    epochs = total_steps / max(1, steps_per_epoch)
    evals = (f"evaluation every {cfg.train.eval_every_epochs} epochs" if cfg.train.eval_every_epochs
             else "evaluation at the end")
    first = f"steps {start_step + 1}..{total_steps} of {total_steps}" if start_step else f"{total_steps} steps"
    budget = f", at most {cfg.train.time_budget_min:g} min" if cfg.train.time_budget_min else ""
    every = "every step" if cfg.train.log_every == 1 else f"every {cfg.train.log_every} steps"
    lines.append(f"  {first} ({epochs:.3g} epochs{budget}); metrics {every}, {evals}")
    extra = getattr(task, "summary_lines", None)  # optional task member (engine/task.py)
    if extra is not None:
        lines.extend(extra(cfg, total_steps))
    lines.append("  estimated time: logged after the 2nd step (from the step times measured)")
    return lines


def estimate_line(first_s: float, second_s: float, steps_left: int, seconds: float | None = None,
                  note: str = "") -> str:
    """The estimated time from the first two steps' durations (the 2nd is the steady-state one): ``seconds`` when
    the task estimated the steps left itself (``note`` says how), else ``second_s`` for each of them."""
    seconds = second_s * steps_left if seconds is None else seconds
    return (f"estimated time: step 1 took {first_s:.2f} s (warm-up included), step 2 {second_s:.2f} s -> about "
            f"{duration(seconds)} for the {steps_left} steps left ({note + '; ' if note else ''}evaluations not "
            "included)")


def duration(seconds: float) -> str:
    """``42 s``, ``6.8 min``, ``2.3 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
