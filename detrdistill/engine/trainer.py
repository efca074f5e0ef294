"""The training loop (``detrdistill train`` and ``detrdistill distill``), on accelerate.

One process, several GPUs or several machines: launch with ``accelerate launch`` or ``torchrun``;
the loop shards each global batch across processes, all-reduces the set-loss normaliser once
(in the criterion) and averages gradients with DDP. Checkpoints are atomic and ``resume=True``
continues exactly (same step, optimizer, scheduler, data order, augmentation and RNG).

:func:`run_training` = :func:`setup_run` (output folder, data, task, optimizer, resume), then
:func:`train_step` + :func:`after_step` per step, then :func:`finish_run` (checkpoint, export, final eval).
The engine is given a task class (:class:`~detrdistill.engine.task.TaskType`: its name and the models it reads are
known before anything loads), builds the :class:`~detrdistill.engine.task.Task` and sees nothing else of it.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from detrdistill.config import Config
from detrdistill.data import collate_fn
from detrdistill.engine import term_cap
from detrdistill.engine.checkpoint import load_latest_intact, save_checkpoint
from detrdistill.engine.evaluator import evaluate, write_eval_json
from detrdistill.engine.grad_balance import gradient_balance
from detrdistill.engine.loading import check_batch_fits, eval_loader, train_loader
from detrdistill.engine.metrics import MetricsLog, mean_over_processes
from detrdistill.engine.optim import build_optimizer, build_scheduler
from detrdistill.engine.interrupt import TrainingInterrupted
from detrdistill.engine.run_dir import export_atomically
from detrdistill.engine.setup import build_datasets, claim_output_dir, commit_output_dir, make_accelerator
from detrdistill.engine.task import TaskType, trainable_named_parameters
from detrdistill.engine.tasks import move_targets
from detrdistill.errors import NonFiniteLossError
from detrdistill.export import finish_model_dir
from detrdistill.export.model_card import write_model_card
from detrdistill.models.family_index import check_family

log = logging.getLogger("detrdistill")

PLAN_WARMUP, PLAN_STEPS = 10, 20  # a time-budgeted run times steps 11-30, after warm-up, to fix its length


def _steps_that_fit(state: dict, budget_s: float, per_step: float, reserve_s: float, accelerator,
                    time_left=None, cap: int | None = None) -> int:
    """The step count at which a run at ``per_step`` seconds a step ends inside the budget, ``reserve_s`` (one
    evaluation or checkpoint) kept back; the same number on every process (their clocks differ slightly).

    ``time_left``: the task's ``time_left(step, total, step_s)`` (engine/task.py) when its steps do not all cost the
    one timed (distillation's steps after ``distill.stop_at`` run without the teacher): then the largest total up to
    ``cap`` whose remaining steps fit, found by bisection (their cost grows with the total)."""
    room = max(0.0, budget_s - state["elapsed_s"] - reserve_s)
    step = state["step"]
    if time_left is None or cap is None:
        fits = step + int(room / max(per_step, 1e-9))
    else:
        lo, hi = step, max(step, cap)
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if time_left(step, mid, per_step)[0] <= room else (lo, mid - 1)
        fits = lo
    return int(accelerator.reduce(torch.tensor([float(fits)], device=accelerator.device), "mean").item())


def _plan_to_budget(state: dict, plan: dict, budget_s: float, per_step: float, accelerator,
                    time_left=None) -> None:
    """Time budget: fix the run's length (and so its lr schedule) from the step time measured after
    warm-up, so the schedule completes within the budget instead of being cut mid-way (steps that cost less than
    the timed ones, e.g. after ``distill.stop_at``, priced by the task's ``time_left``). Saved in
    checkpoints for --resume (with what it was planned for: a resume with another budget or length plans again)."""
    per_step = accelerator.reduce(torch.tensor([per_step], device=accelerator.device), "mean").item()
    fits = _steps_that_fit(state, budget_s, per_step, 0.0, accelerator, time_left, plan["total"])
    planned = max(state["step"], min(plan["total"], fits))
    if planned < plan["total"]:
        log.info("time budget %.1f min at %.3f s/step: %d steps instead of %d", budget_s / 60, per_step, planned,
                 plan["total"])
    plan["total"] = state["planned_total"] = planned


def _replan_after_overhead(run: "Run", spent_s: float) -> None:
    """After a checkpoint or an evaluation (``spent_s`` seconds the step timing did not see): shorten a budgeted
    run's plan to what fits at the mean time per step since timing began, overheads included, with the longest
    overhead seen kept in reserve, so the run ends its schedule inside the budget instead of being stopped early."""
    run.overhead_s = max(run.overhead_s, spent_s)
    state, plan = run.state, run.plan
    if run.budget_s == math.inf or "planned_total" not in state or run.plan_t0 is None:
        return
    now = {**state, "elapsed_s": state["elapsed_s"] + spent_s}
    per_step = (now["elapsed_s"] - run.plan_t0) / max(1, state["step"] - run.plan_s0)
    fits = max(state["step"] + 1, _steps_that_fit(now, run.budget_s, per_step, run.overhead_s, run.accelerator,
                                                   getattr(run.task, "time_left", None), plan["total"]))
    if fits < plan["total"]:
        log.info("time budget: evaluations and checkpoints take time too, %d steps instead of %d", fits, plan["total"])
        plan["total"] = state["planned_total"] = fits
        if run.bar is not None:
            run.bar.total = fits


def _install_stop_handler(flag: dict) -> dict:
    """SIGINT/SIGTERM finish the current step, checkpoint and exit cleanly. Returns the old handlers."""
    old = {}

    def handler(signum, frame):
        flag["stop"] = True
        flag["signal"] = signum  # the CLI exits 128 + signum after saving
        log.warning("signal %s: stopping after this step with a checkpoint (send again to abort)", signum)
        signal.signal(signum, old.get(signum, signal.SIG_DFL))
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    return old


@dataclass
class Run:
    """Everything one training run holds between its steps."""
    cfg: Config
    accelerator: Any
    out_dir: Path
    task: Any              # the Task (unwrapped; its class is the TaskType the run was given)
    model: Any             # the task as prepared by accelerate (DDP-wrapped when distributed)
    optimizer: Any
    scheduler: Any
    batches: Any           # endless iterator over training batches
    val_ds: Any
    val_load: Any
    metrics: MetricsLog
    state: dict
    plan: dict
    steps_per_epoch: int
    budget_s: float
    bar: Any = None
    stop: dict = field(default_factory=lambda: {"stop": False})
    old_handlers: dict = field(default_factory=dict)
    # (monotonic start, elapsed_s at start, process CPU time at start, cpu_s at start or None when unknown)
    clock: tuple[float, float, float, float | None] = (0.0, 0.0, 0.0, 0.0)
    plan_t0: float | None = None   # elapsed_s when the budget's step timing began, at step plan_s0
    plan_s0: int = 0
    overhead_s: float = 0.0        # the longest checkpoint or evaluation so far (kept in reserve by the plan)
    configured_total: int = 0      # the length the config asks for (train.max_steps or epochs), before any plan
    category_ids: list[int] | None = None  # the dataset's category id of each label, recorded in the exported model
    lock: Any = None       # the output folder's lock (detrdistill.output_folder), released when the run ends
    identity: dict = field(default_factory=dict)  # what the run trains on (engine/run_identity.py), in checkpoints
    summary: list[str] = field(default_factory=list)  # the start-up block (engine/run_summary.py)
    start_step: int = 0    # the step this process started from (> 0 after --resume)
    first_steps_s: list[float] = field(default_factory=list)  # elapsed_s after each of the first two steps
    warned: set = field(default_factory=set)  # (term, module or None) the gradient-balance probe warned about

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    def checkpoint(self) -> None:
        st = self.state
        save_checkpoint(self.out_dir, self.task, self.optimizer, self.scheduler,
                        {**st, "epoch": st["step"] // self.steps_per_epoch}, rank=self.accelerator.process_index,
                        world_size=self.world, keep=self.cfg.train.keep_checkpoints,
                        barrier=self.accelerator.wait_for_everyone, identity=self.identity,
                        scaler=getattr(self.accelerator, "scaler", None))

    def export(self, path: Path) -> None:
        """Publish the deployable model (weights, config and image processor together, atomically) at ``path``."""
        def write(tmp: Path) -> None:
            self.task.export(tmp)
            finish_model_dir(tmp, self.cfg, self.task.student.model.config, self.category_ids)

        need = sum(t.numel() * t.element_size() for t in self.task.student.state_dict().values())
        export_atomically(write, path, need)  # never half written, never without its processor

    def evaluate(self, tag: str) -> dict | None:
        if self.val_load is None:
            return None
        stats = evaluate(self.task.student, self.val_load, self.val_ds, self.accelerator,
                         progress=self.cfg.train.progress, desc=tag)
        self.metrics.write({"step": self.state["step"], "epoch": self.state["step"] / self.steps_per_epoch,
                            **{f"eval/{k}": v for k, v in stats.items()}})
        return stats


def _resume_state(run_dir: Path, task, optimizer, scheduler, accelerator, resume: bool, identity: dict) -> dict:
    state = {"step": 0, "elapsed_s": 0.0, "cpu_s": 0.0, "stopped_early": False}
    if resume:
        ckpt, loaded = load_latest_intact(run_dir, task, optimizer, scheduler, rank=accelerator.process_index,
                                          world_size=accelerator.num_processes, identity=identity,
                                          scaler=getattr(accelerator, "scaler", None))
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", run_dir / "checkpoints")
        else:
            state = {"cpu_s": None, **loaded}  # a checkpoint written before CPU time was kept: unknown from here on
            log.info("resumed from %s (step %d)", ckpt, state["step"])
    return state


def setup_run(cfg: Config, task_type: TaskType, resume: bool = False, overwrite: bool = False) -> Run:
    """Output folder (checked against ``task_type``'s inputs and locked first; refused before any write when it
    holds another run and neither ``resume`` nor ``overwrite`` is given), data, the task
    (``task_type.from_config``), optimizer and schedule; restores the last checkpoint with ``resume``; only then
    the run's first writes (``--overwrite``'s deletion, run.json, config.yaml)."""
    check_family(cfg.model.family)  # before anything is claimed or loaded
    accelerator = make_accelerator(cfg)
    out_dir, resume, replace, lock = claim_output_dir(cfg, accelerator, task_type, resume, overwrite)
    try:
        return _setup_claimed(cfg, task_type, accelerator, out_dir, resume, replace, lock)
    except BaseException:
        lock.release()
        raise


def _setup_claimed(cfg: Config, task_type: TaskType, accelerator, out_dir: Path, resume: bool, replace: bool,
                   lock) -> Run:
    from accelerate.utils import set_seed

    from detrdistill.engine.run_identity import run_identity

    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    set_seed(cfg.train.seed)
    train_ds, val_ds = build_datasets(cfg, accelerator)
    task = task_type.from_config(cfg, train_ds.id2label)
    optimizer = build_optimizer(task, cfg.optim)
    steps_per_epoch = len(train_ds) // (cfg.train.batch_size * world)
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    plan = {"total": total}  # a time budget shortens it once the step time is measured (see after_step)
    scheduler = build_scheduler(optimizer, lambda: plan["total"], cfg.optim)
    val_load = eval_loader(val_ds, collate_fn, cfg.train.batch_size, rank, world,
                           cfg.data.num_workers) if val_ds is not None else None
    identity = run_identity(cfg, task_type, train_ds)
    state = _resume_state(out_dir, task, optimizer, scheduler, accelerator, resume, identity)
    check_batch_fits(train_ds, cfg.train.batch_size, world)
    commit_output_dir(cfg, accelerator, task_type, replace)  # every check passed: the run's first writes
    from detrdistill.engine.tracking import start_trackers  # train.report_to, beside metrics.jsonl
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=main, on_write=start_trackers(cfg, accelerator, task_type.name))
    budget_s = cfg.train.time_budget_min * 60 if cfg.train.time_budget_min else math.inf
    if state["step"] > 0:
        if "planned_total" in state and state.get("plan_inputs") != [total, budget_s]:
            # resumed with another length or budget (allowed): plan again from this run's step times
            log.info("--resume with another train.max_steps / time_budget_min: the time budget plans again")
            del state["planned_total"]
        plan["total"] = state.get("planned_total", total)
        metrics.truncate_after(state["step"])
    elif main and (out_dir / "metrics.jsonl").exists():
        (out_dir / "metrics.jsonl").unlink()
    loader, _ = train_loader(train_ds, collate_fn, cfg.train.batch_size, cfg.train.seed, rank, world,
                             cfg.data.num_workers, start_step=state["step"])
    model, optimizer = accelerator.prepare(task, optimizer)
    from detrdistill.engine.run_summary import summary_lines
    summary = summary_lines(cfg, out_dir, len(train_ds), len(val_ds) if val_ds is not None else None,
                            steps_per_epoch, state["step"], plan["total"], task, accelerator)
    return Run(cfg=cfg, accelerator=accelerator, out_dir=out_dir, task=accelerator.unwrap_model(model),
               model=model, optimizer=optimizer, scheduler=scheduler,
               batches=iter(loader),  # endless: one iterator (and one set of workers) for the whole run
               val_ds=val_ds, val_load=val_load, metrics=metrics, state=state, plan=plan,
               steps_per_epoch=steps_per_epoch, budget_s=budget_s, category_ids=dataset_category_ids(train_ds),
               lock=lock, identity=identity, summary=summary, start_step=state["step"], configured_total=total)


def dataset_category_ids(dataset) -> list[int] | None:
    """The COCO category id of each contiguous label of ``dataset`` (label order), or None when it has none."""
    label2cat = getattr(dataset, "label2cat", None)
    return [int(label2cat[i]) for i in range(len(label2cat))] if label2cat else None


def train_step(run: Run, batch: dict, probe: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Forward, backward and optimizer step on one batch; advances ``run.state['step']`` and the clock. ``probe``:
    also measure the gradient balance of the step's loss parts (engine/grad_balance.py; the step is unchanged)."""
    acc, cfg, state = run.accelerator, run.cfg, run.state
    pv = batch["pixel_values"].to(acc.device, non_blocking=True)
    pm = batch["pixel_mask"].to(acc.device, non_blocking=True)
    targets = move_targets(batch["labels"], acc.device)
    if hasattr(run.task, "set_step"):  # optional task member (engine/task.py): schedules inside the task
        run.task.set_step(state["step"], run.plan["total"])
    cap = getattr(run.task, "term_cap", None)  # optional task member: distill.max_term_ratio (engine/term_cap.py)
    cap = cap if cap is not None and state["step"] % cap[1] == 0 else None
    if probe or cap:
        run.task.keep_parts = True
    loss, loss_dict = run.model(pv, pm, targets)
    if probe or cap:
        measured = _measure_balance(run)
        if measured is not None and probe:
            _report_balance(run, measured[1])
        if measured is not None and cap:
            loss = term_cap.apply(run, loss, *measured, cap[0])
    if not torch.isfinite(loss):  # a --resume would repeat it exactly: a new start with other settings is needed
        raise NonFiniteLossError(f"step {state['step'] + 1}: loss is {loss.item()} (training diverged); lower "
                                 "optim.lr or raise optim.warmup_steps and start over with --overwrite")
    acc.backward(loss)
    if cfg.optim.grad_clip > 0:
        acc.clip_grad_norm_(run.model.parameters(), cfg.optim.grad_clip)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    start, start_elapsed, start_cpu, cpu_before = run.clock
    state["elapsed_s"] = start_elapsed + time.monotonic() - start
    if cpu_before is not None:  # this process's CPU time (all its threads; not data-loader worker processes)
        state["cpu_s"] = cpu_before + time.process_time() - start_cpu
    run.bar.update(1)
    return loss, loss_dict


def _measure_balance(run: Run):
    """``(parts, balance)``: the step's loss parts (the task kept them) and their gradient balance
    (engine/grad_balance.py), or None when there is nothing to compare (one part, or a part not finite)."""
    task = run.task
    task.keep_parts = False
    parts, task.last_parts = task.last_parts, None
    if not parts or len(parts) < 2 or not all(torch.isfinite(v) for v in parts.values()):
        return None
    named = list(trainable_named_parameters(task))
    return parts, gradient_balance(parts, [p for _, p in named], max_norm=run.cfg.optim.grad_clip,
                                   names=[n for n, _ in named])


def _report_balance(run: Run, balance) -> None:
    """The gradient-balance probe: logged and written to metrics.jsonl as ``grad/*``; a warning names each part
    that dominates the update. The step itself is unchanged."""
    clip = run.cfg.optim.grad_clip
    step = run.state["step"] + 1
    run.metrics.write({"step": step, **balance.record()})
    log.info("gradient balance at step %d: %s", step, balance.line())
    # each warning once per run (the probe repeats every probe_gradients_every steps; the numbers are in the log)
    for t in (t for t in balance.dominant() if (t.name, None) not in run.warned):
        run.warned.add((t.name, None))
        log.warning("the %s term's gradient is %.1fx the student's own at step %d (cos %+.2f): it steers the %s "
                    "update, the student's own loss keeps %.0f %% of its progress. If the distilled student trails "
                    "the student alone, lower its weights (distill.%s.*) or check its inputs", t.name, t.ratio,
                    step, t.cos, f"clipped (optim.grad_clip={clip:g})" if clip > 0 else "unclipped",
                    100 * balance.own_share, t.name)
    for m in (m for m in balance.dominant_modules() if (m.name, m.module) not in run.warned):
        run.warned.add((m.name, m.module))
        log.warning("the %s term's gradient in the student's %s is %.1fx the student's own there at step %d: with "
                    "per-parameter step sizes (AdamW) that module learns the term rather than the detection loss. If "
                    "the distilled student trails the student alone, lower distill.%s.weight",
                    m.name, m.module, m.ratio, step, m.name)


def _log_step(run: Run, loss: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> None:
    step = run.state["step"]
    # by name: processes may log different components (no denoising losses on a process whose batch has no boxes)
    comps = mean_over_processes(run.accelerator, {"__total__": loss, **loss_dict})
    total = comps.pop("__total__")
    rec = {"step": step, "epoch": step / run.steps_per_epoch, "time_s": round(run.state["elapsed_s"], 3),
           "lr": run.scheduler.get_last_lr()[-1], "loss": total, **{f"loss/{k}": v for k, v in comps.items()}}
    run.metrics.write(rec)
    run.bar.set_postfix(loss=f"{total:.3f}")


def after_step(run: Run, loss: torch.Tensor, loss_dict: dict[str, torch.Tensor]) -> bool:
    """Plan (time budget), log, decide to stop, checkpoint and evaluate; True when the run must end now."""
    state, plan, cfg, acc = run.state, run.plan, run.cfg, run.accelerator
    step = state["step"]
    if step - run.start_step <= 2:
        _time_first_steps(run)
    if run.budget_s < math.inf:
        # time steps from PLAN_WARMUP steps after this process started (a fresh run: steps 11-30; a resumed run
        # too, wherever it resumed), and plan once, unless the checkpoint brought a plan
        if run.plan_t0 is None and step >= run.start_step + PLAN_WARMUP:
            run.plan_t0, run.plan_s0 = state["elapsed_s"], step
        elif "planned_total" not in state and run.plan_t0 is not None and step == run.plan_s0 + PLAN_STEPS:
            _plan_to_budget(state, plan, run.budget_s, (state["elapsed_s"] - run.plan_t0) / PLAN_STEPS, acc,
                            getattr(run.task, "time_left", None))
            state["plan_inputs"] = [run.configured_total, run.budget_s]
            run.bar.total = plan["total"]
    if step % cfg.train.log_every == 0 or step == 1 or step == plan["total"]:
        _log_step(run, loss, loss_dict)
    if step in cfg.train.snapshot_steps and acc.is_main_process:
        run.export(run.out_dir / "snapshots" / f"step-{step}")
    halt = run.stop["stop"] or state["elapsed_s"] > run.budget_s
    if run.world > 1:  # every process must take the same decision
        halt = acc.reduce(torch.tensor([float(halt)], device=acc.device), "sum").item() > 0
    run.stop["stop"] = halt
    if run.stop["stop"] or step >= plan["total"]:
        return True
    t0, overhead = time.monotonic(), False
    if step % (cfg.train.checkpoint_every_steps or run.steps_per_epoch) == 0:
        run.checkpoint()
        overhead = True
    if step % run.steps_per_epoch == 0:
        ep = step // run.steps_per_epoch
        if cfg.train.eval_every_epochs and ep % cfg.train.eval_every_epochs == 0:
            run.evaluate(f"eval epoch {ep}")
            run.model.train()
            overhead = True
    if overhead:  # decided by the step alone: every process replans at the same steps (it reduces across them)
        _replan_after_overhead(run, time.monotonic() - t0)
    return False


def _time_first_steps(run: Run) -> None:
    """After the 2nd step: the estimated time, completing the start-up block (main process)."""
    run.first_steps_s.append(run.state["elapsed_s"])
    if len(run.first_steps_s) == 2 and run.accelerator.is_main_process and run.plan["total"] > run.state["step"]:
        from detrdistill.engine.run_summary import estimate_line
        first, step_s = run.first_steps_s[0] - run.clock[1], run.first_steps_s[1] - run.first_steps_s[0]
        step, total = run.state["step"], run.plan["total"]
        time_left = getattr(run.task, "time_left", None)  # optional task member (engine/task.py)
        seconds, note = time_left(step, total, step_s) if time_left is not None else (None, "")
        log.info("%s", estimate_line(first, step_s, total - step, seconds, note))


def finish_run(run: Run) -> dict:
    """Last checkpoint, export of the deployable model, final evaluation (``eval.json``), process teardown."""
    acc, state, main = run.accelerator, run.state, run.accelerator.is_main_process
    run.bar.close()
    for sig, h in run.old_handlers.items():
        signal.signal(sig, h)
    run.checkpoint()
    if main:
        run.export(run.out_dir / "model")
    acc.wait_for_everyone()
    final = run.evaluate("final eval")
    if main and final is not None:
        write_eval_json(run.out_dir / "eval.json", final, {"step": state["step"], "split": "val",
                                                           "stopped_early": state["stopped_early"],
                                                           "train_seconds": round(state["elapsed_s"], 2),
                                                           "train_cpu_seconds": None if state.get("cpu_s") is None
                                                           else round(state["cpu_s"], 2)})
        log.info("final eval: %s", json.dumps({k: round(v, 2) for k, v in final.items()}))
    if main:
        # README.md (atomic), with the final stats and the models the task learned from
        write_model_card(run.cfg, run.out_dir / "model", final, run.task.inputs(run.cfg))
    acc.wait_for_everyone()
    run.model = run.optimizer = None
    acc.end_training()
    if run.world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return final or {}


def run_training(cfg: Config, task_type: TaskType, resume: bool = False, overwrite: bool = False) -> dict:
    """Train the task of ``task_type`` (:class:`~detrdistill.engine.tasks.DetectionTask`: a detector alone,
    :class:`~detrdistill.distillation.task.DistillTask`: a student under its teacher); returns the final evaluation
    stats.

    A folder holding another run needs ``resume`` or ``overwrite`` (see :mod:`detrdistill.engine.run_dir`);
    a run stopped by SIGINT/SIGTERM saves, then raises :class:`TrainingInterrupted`."""
    run = setup_run(cfg, task_type, resume, overwrite)
    try:
        return _train(run, cfg)
    finally:
        run.lock.release()  # the output folder is free again (the OS frees it too if this process dies)


def _train(run: Run, cfg: Config) -> dict:
    from detrdistill.progress import progress_bar

    term_cap.restore(run)  # distill.max_term_ratio: refused under DDP; a resume continues with the saved weights
    run.old_handlers = _install_stop_handler(run.stop)
    if run.accelerator.is_main_process:
        for line in run.summary:
            log.info("%s", line)
    run.clock = (time.monotonic(), run.state["elapsed_s"], time.process_time(), run.state.get("cpu_s"))
    run.bar = progress_bar(total=run.plan["total"], initial=run.state["step"], desc=f"{run.task.name} {run.out_dir.name}",
                   disable=not (run.accelerator.is_main_process and cfg.train.progress), dynamic_ncols=True)
    run.model.train()
    # the gradient balance at the first step of a fresh run (and every probe_gradients_every steps); one process
    # (a probe under DDP would need every rank)
    probing = cfg.train.probe_gradients and hasattr(run.task, "keep_parts") and run.world == 1
    every = cfg.train.probe_gradients_every
    while run.state["step"] < run.plan["total"] and not run.stop["stop"]:
        probe = probing and (run.state["step"] == 0 or bool(every and (run.state["step"] + 1) % every == 0))
        loss, loss_dict = train_step(run, next(run.batches), probe)
        if after_step(run, loss, loss_dict):
            break
    # here, not in after_step: a signal may also land after its stop check (during a checkpoint or an evaluation)
    run.state["stopped_early"] = run.state["step"] < run.plan["total"]
    final = finish_run(run)
    if run.stop.get("signal"):  # saved by finish_run; report the interruption as a failure
        raise TrainingInterrupted(run.stop["signal"], run.state["step"], run.out_dir)
    return final
