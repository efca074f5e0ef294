"""Atomic training checkpoints: everything needed to continue a run exactly.

Layout of ``<output_dir>/checkpoints/step-<N>/``::

    weights.safetensors   the task's ``checkpoint_state_dict`` (see :mod:`detrdistill.engine.task`)
    optimizer.pt          optimizer state
    scheduler.pt          lr scheduler state
    rng.pt                python / numpy / torch (cpu + cuda) generator states, per process
    state.json            {"step", "epoch", "batch_in_epoch", "elapsed_s", ...}

A checkpoint is written into ``step-<N>.tmp`` and renamed when complete, so a crash never leaves a
half-written checkpoint that ``--resume`` could pick up. ``latest_checkpoint`` ignores ``*.tmp``.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from detrdistill.engine.task import checkpoint_state, load_checkpoint_state
from detrdistill.errors import CheckpointError

CKPT_DIR = "checkpoints"


def _state_to_save(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied weights (e.g. Deformable DETR's shared heads) share storage, which safetensors refuses
    return {k: v.detach().cpu().clone().contiguous() for k, v in checkpoint_state(task).items()}


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(output_dir: str | Path, task: torch.nn.Module, optimizer, scheduler, state: dict,
                    *, rank: int = 0, world_size: int = 1, keep: int = 2, barrier=None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically. Every process calls it (each saves its RNG state);
    rank 0 writes the shared files and renames. ``barrier`` synchronises processes when given."""
    root = Path(output_dir) / CKPT_DIR
    final = root / f"step-{state['step']:08d}"
    tmp = root / f"step-{state['step']:08d}.tmp"
    if rank == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    if barrier:
        barrier()
    torch.save(rng_state(), tmp / f"rng-{rank}.pt")
    if rank == 0:
        save_file(_state_to_save(task), str(tmp / "weights.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / "state.json").write_text(json.dumps({**state, "world_size": world_size}, indent=1))
    if barrier:
        barrier()
    if rank == 0:
        for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if barrier:
        barrier()
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and p.name.startswith("step-") and not p.name.endswith(".tmp")
                  and (p / "state.json").is_file())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path, task: torch.nn.Module, optimizer, scheduler, *, rank: int = 0,
                    world_size: int = 1) -> dict:
    """Restore task/optimizer/scheduler/RNG from ``path``; returns the saved trainer state."""
    path = Path(path)
    state = json.loads((path / "state.json").read_text())
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(f"{path}: saved with {state.get('world_size')} processes, resuming with {world_size}; "
                           "resume with the same number of processes (the data order depends on it)")
    weights = load_file(str(path / "weights.safetensors"))
    try:
        load_checkpoint_state(task, weights)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu", weights_only=False))
    rng_file = path / f"rng-{rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, map_location="cpu", weights_only=False))
    return state
