"""The training loop (``detrdistill train`` and ``detrdistill distill``), on accelerate.

One process, several GPUs or several machines: launch with ``accelerate launch`` or ``torchrun``;
the loop shards each global batch across processes, all-reduces the set-loss normaliser once
(in the criterion) and averages gradients with DDP. Checkpoints are atomic and ``resume=True``
continues exactly (same step, optimizer, scheduler, data order, augmentation and RNG).
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from pathlib import Path

import torch

from detrdistill.config import Config, save_config
from detrdistill.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from detrdistill.engine.evaluator import evaluate, write_eval_json
from detrdistill.engine.loading import eval_loader, train_loader
from detrdistill.engine.metrics import MetricsLog
from detrdistill.engine.optim import build_optimizer, build_scheduler
from detrdistill.data import collate_fn
from detrdistill.engine.tasks import build_task, move_targets
from detrdistill.export import finish_model_dir

log = logging.getLogger("detrdistill")


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    mp = cfg.train.mixed_precision
    if cpu and mp == "fp16":
        log.warning("fp16 needs a GPU; training in float32")
        mp = "no"
    # find_unused_parameters: layer-0 query projections of DETR-style decoders get no gradient
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    return Accelerator(cpu=cpu, mixed_precision=mp, kwargs_handlers=[ddp])


def build_datasets(cfg: Config, accelerator, need_train: bool = True):
    """(train, val) CocoDetection datasets; generates the synthetic set when the config asks for it."""
    from detrdistill.config import SplitConfig
    from detrdistill.data import build_dataset, make_synthetic_coco

    data = cfg.data
    if data.train is None and data.val is None:
        if not data.synthetic:
            raise ValueError("config: data.train / data.val are not set; give COCO files or set data.synthetic=true")
        root = Path(data.synth_dir or Path(cfg.train.output_dir) / "data")
        if accelerator.is_main_process:
            make_synthetic_coco(root, num_train=data.synth_images, num_val=max(4, data.synth_images // 4),
                                size=data.synth_size, seed=data.synth_seed)
        accelerator.wait_for_everyone()
        data = data.model_copy(update={
            "train": SplitConfig(ann_file=str(root / "train.json"), image_dir=str(root / "images")),
            "val": SplitConfig(ann_file=str(root / "val.json"), image_dir=str(root / "images"))})
    train = build_dataset(data.train, data, train=True) if need_train and data.train else None
    val = build_dataset(data.val, data, train=False) if data.val else None
    if need_train and train is None:
        raise ValueError("config: data.train is not set")
    return train, val


PLAN_WARMUP, PLAN_STEPS = 10, 20  # a time-budgeted run times steps 11-30, after warm-up, to fix its length


def _plan_to_budget(state: dict, plan: dict, budget_s: float, per_step: float, accelerator) -> None:
    """Time budget: fix the run's length (and so its lr schedule) from the step time measured after
    warm-up, so the schedule completes within the budget instead of being cut mid-way. Saved in
    checkpoints for --resume."""
    per_step = torch.tensor([per_step], device=accelerator.device)
    per_step = accelerator.reduce(per_step, "mean").item()
    fits = state["step"] + int(max(0.0, budget_s - state["elapsed_s"]) / per_step)
    planned = max(state["step"], min(plan["total"], fits))
    if planned < plan["total"]:
        log.info("time budget %.1f min at %.3f s/step: %d steps instead of %d", budget_s / 60, per_step, planned,
                 plan["total"])
    plan["total"] = state["planned_total"] = planned


def _install_stop_handler(flag: dict) -> dict:
    """SIGINT/SIGTERM finish the current step, checkpoint and exit cleanly. Returns the old handlers."""
    old = {}

    def handler(signum, frame):
        flag["stop"] = True
        log.warning("signal %s: stopping after this step with a checkpoint (send again to abort)", signum)
        signal.signal(signum, old.get(signum, signal.SIG_DFL))
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            old[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread
            pass
    return old


def run_training(cfg: Config, mode: str = "train", resume: bool = False) -> dict:
    """Train (``mode='train'``) or distil (``mode='distill'``); returns the final evaluation stats."""
    from accelerate.utils import set_seed
    from detrdistill.progress import progress_bar

    accelerator = make_accelerator(cfg)
    rank, world, main = accelerator.process_index, accelerator.num_processes, accelerator.is_main_process
    out_dir = Path(cfg.train.output_dir)
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    set_seed(cfg.train.seed)
    train_ds, val_ds = build_datasets(cfg, accelerator)
    task = build_task(cfg, train_ds.id2label, mode)
    optimizer = build_optimizer(task, cfg.optim)
    steps_per_epoch = len(train_ds) // (cfg.train.batch_size * world)
    total = cfg.train.max_steps or cfg.train.epochs * steps_per_epoch
    plan = {"total": total}  # a time budget shortens it once the step time is measured (see below)
    scheduler = build_scheduler(optimizer, lambda: plan["total"], cfg.optim)
    val_load = eval_loader(val_ds, collate_fn, cfg.train.batch_size, rank, world,
                           cfg.data.num_workers) if val_ds is not None else None

    state = {"step": 0, "elapsed_s": 0.0, "stopped_early": False}
    metrics = MetricsLog(out_dir / "metrics.jsonl", enabled=main)
    if resume:
        ckpt = latest_checkpoint(out_dir)
        if ckpt is None:
            log.warning("--resume: no checkpoint in %s; starting from scratch", out_dir / "checkpoints")
        else:
            state = load_checkpoint(ckpt, task, optimizer, scheduler, rank=rank, world_size=world)
            plan["total"] = state.get("planned_total", total)
            log.info("resumed from %s (step %d)", ckpt, state["step"])
    if state["step"] == 0:
        if main and (out_dir / "metrics.jsonl").exists():
            (out_dir / "metrics.jsonl").unlink()
    else:
        metrics.truncate_after(state["step"])

    loader, _ = train_loader(train_ds, collate_fn, cfg.train.batch_size, cfg.train.seed, rank, world,
                             cfg.data.num_workers, start_step=state["step"])
    model, optimizer = accelerator.prepare(task, optimizer)
    unwrapped = accelerator.unwrap_model(model)

    def checkpoint():
        save_checkpoint(out_dir, unwrapped, optimizer, scheduler, {**state, "epoch": state["step"] // steps_per_epoch},
                        rank=rank, world_size=world, keep=cfg.train.keep_checkpoints,
                        barrier=accelerator.wait_for_everyone)

    def run_eval(tag: str) -> dict | None:
        if val_load is None:
            return None
        stats = evaluate(unwrapped.student, val_load, val_ds, accelerator, progress=cfg.train.progress, desc=tag)
        metrics.write({"step": state["step"], "epoch": state["step"] / steps_per_epoch,
                       **{f"eval/{k}": v for k, v in stats.items()}})
        return stats

    stop = {"stop": False}
    old_handlers = _install_stop_handler(stop)
    start, start_elapsed = time.monotonic(), state["elapsed_s"]
    budget_s = cfg.train.time_budget_min * 60 if cfg.train.time_budget_min else math.inf
    bar = progress_bar(total=plan["total"], initial=state["step"], disable=not (main and cfg.train.progress),
               desc=f"{mode} {out_dir.name}", dynamic_ncols=True)
    model.train()
    batches = iter(loader)  # endless: one iterator (and one set of workers) for the whole run
    plan_t0 = None
    while state["step"] < plan["total"] and not stop["stop"]:
        batch = next(batches)
        pv = batch["pixel_values"].to(accelerator.device, non_blocking=True)
        pm = batch["pixel_mask"].to(accelerator.device, non_blocking=True)
        targets = move_targets(batch["labels"], accelerator.device)
        loss, loss_dict = model(pv, pm, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"step {state['step'] + 1}: loss is {loss.item()}; lower optim.lr or "
                                     "raise optim.warmup_steps (last checkpoint is intact for --resume)")
        accelerator.backward(loss)
        if cfg.optim.grad_clip > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.grad_clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["elapsed_s"] = start_elapsed + time.monotonic() - start
        bar.update(1)
        step = state["step"]
        if budget_s < math.inf and "planned_total" not in state:
            if step == PLAN_WARMUP:
                plan_t0 = state["elapsed_s"]
            elif plan_t0 is not None and step == PLAN_WARMUP + PLAN_STEPS:
                _plan_to_budget(state, plan, budget_s, (state["elapsed_s"] - plan_t0) / PLAN_STEPS, accelerator)
                bar.total = plan["total"]
        if step % cfg.train.log_every == 0 or step == 1 or step == plan["total"]:
            comps = torch.stack([loss.detach().float()] + [v.detach().float() for v in loss_dict.values()])
            comps = accelerator.reduce(comps, "mean").tolist()
            rec = {"step": step, "epoch": step / steps_per_epoch, "time_s": round(state["elapsed_s"], 3),
                   "lr": scheduler.get_last_lr()[-1], "loss": comps[0], **{f"loss/{k}": v for k, v in zip(loss_dict, comps[1:])}}
            metrics.write(rec)
            bar.set_postfix(loss=f"{comps[0]:.3f}")
        halt = stop["stop"] or state["elapsed_s"] > budget_s
        if world > 1:  # every process must take the same decision
            halt = accelerator.reduce(torch.tensor([float(halt)], device=accelerator.device), "sum").item() > 0
        stop["stop"] = halt
        if stop["stop"] or step >= plan["total"]:
            state["stopped_early"] = step < plan["total"]
            break
        every = cfg.train.checkpoint_every_steps or steps_per_epoch
        if step % every == 0:
            checkpoint()
        if step % steps_per_epoch == 0:
            ep = step // steps_per_epoch
            if cfg.train.eval_every_epochs and ep % cfg.train.eval_every_epochs == 0:
                run_eval(f"eval epoch {ep}")
                model.train()
    bar.close()
    for sig, h in old_handlers.items():
        signal.signal(sig, h)
    checkpoint()
    if main:
        unwrapped.export(out_dir / "model")
    accelerator.wait_for_everyone()
    final = run_eval("final eval")
    if main and final is not None:
        write_eval_json(out_dir / "eval.json", final, {"step": state["step"], "split": "val",
                                                       "stopped_early": state["stopped_early"],
                                                       "train_seconds": round(state["elapsed_s"], 2)})
        log.info("final eval: %s", json.dumps({k: round(v, 2) for k, v in final.items()}))
    if main:
        finish_model_dir(out_dir / "model", cfg, final, mode)  # image processor + README.md (detrdistill.export)
    accelerator.wait_for_everyone()
    del model, optimizer
    accelerator.end_training()
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return final or {}
