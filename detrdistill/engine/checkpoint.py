"""Atomic training checkpoints: everything needed to continue a run exactly, and nothing that runs code.

Layout of ``<output_dir>/checkpoints/step-<N>/`` (format 2)::

    weights.safetensors   the task's ``checkpoint_state_dict`` (see :mod:`detrdistill.engine.task`)
    optimizer.pt          optimizer state     } tensors + plain python values only: read with
    scheduler.pt          lr scheduler state  } ``torch.load(weights_only=True)``, which refuses to
    rng-<rank>.pt         python / numpy / torch (cpu + cuda) generator states, per process, as
                          tensors and lists (see :func:`rng_state`)
    state.json            {"step", "epoch", "elapsed_s", "format": 2, ...}

Opening a checkpoint folder from elsewhere therefore cannot execute anything: no file is unpickled
beyond plain containers and tensors. Format 1 (no ``format`` key: numpy arrays pickled in ``rng-*.pt``)
still loads: its numpy state is read with only numpy's array-rebuilding functions allowed.

A checkpoint is written into ``step-<N>.tmp`` and renamed when complete, so a crash never leaves a
half-written checkpoint that ``--resume`` could pick up. ``--resume`` walks the checkpoints newest first:
one that cannot be read (truncated or empty file, missing file, bad json) is moved aside to
``step-<N>.damaged`` with a warning and the previous one is used (:func:`load_latest_intact`).
A checkpoint that reads fine but does not fit the model is refused (:class:`CheckpointError`).
"""
from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from detrdistill.engine.task import checkpoint_state, load_checkpoint_state
from detrdistill.errors import CheckpointError

log = logging.getLogger("detrdistill")

CKPT_DIR = "checkpoints"
FORMAT = 2
_STEP_DIR = re.compile(r"^step-\d+$")


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read (truncated, empty, missing, bad json)."""


def _state_to_save(task: torch.nn.Module) -> dict[str, torch.Tensor]:
    # clone: tied weights (e.g. Deformable DETR's shared heads) share storage, which safetensors refuses
    return {k: v.detach().cpu().clone().contiguous() for k, v in checkpoint_state(task).items()}


def rng_state() -> dict:
    """Every generator's state as tensors / lists / numbers (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`; also accepts format 1 (the raw ``getstate()`` objects)."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    if isinstance(npst, dict):
        npst = (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"],
                npst["cached_gaussian"])
    np.random.set_state(npst)
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
    try:
        torch.save(rng_state(), tmp / f"rng-{rank}.pt")
        if rank == 0:
            save_file(_state_to_save(task), str(tmp / "weights.safetensors"))
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            (tmp / "state.json").write_text(json.dumps({**state, "world_size": world_size, "format": FORMAT},
                                                       indent=1))
    except OSError:  # e.g. a full disk: leave no half-written folder taking space; the previous one stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
    """Published checkpoints (``step-<N>`` with a ``state.json``), oldest first; ``*.tmp`` and
    ``*.damaged`` folders are left out."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and _STEP_DIR.match(p.name) and (p / "state.json").is_file())


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    ckpts = list_checkpoints(output_dir)
    return ckpts[-1] if ckpts else None


def _numpy_rebuilders() -> list:
    """The numpy globals a pickled ``np.random.get_state()`` needs: array/dtype rebuilders, nothing else."""
    import importlib

    found = [np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            fn = importlib.import_module(mod)._reconstruct
        except (ImportError, AttributeError):
            continue
        found.append((fn, f"{mod}._reconstruct"))
    return found


def _safe_load(path: Path, legacy_numpy: bool = False):
    """``torch.load(weights_only=True)``; format-1 RNG files may also rebuild numpy arrays (nothing else)."""
    if not path.is_file():
        raise DamagedCheckpoint(f"{path}: file missing")
    if path.stat().st_size == 0:
        raise DamagedCheckpoint(f"{path}: file is empty")
    if not legacy_numpy:
        return torch.load(path, map_location="cpu", weights_only=True)
    with torch.serialization.safe_globals(_numpy_rebuilders()):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_state(path: Path) -> dict:
    """``state.json`` of a checkpoint; raises :class:`DamagedCheckpoint` when unreadable."""
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise DamagedCheckpoint(f"{path / 'state.json'}: unreadable ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise DamagedCheckpoint(f"{path / 'state.json'}: no integer 'step'")
    if state.get("format", 1) > FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state['format']} is newer than this detrdistill "
                              f"understands ({FORMAT}); upgrade detrdistill to resume it")
    return state


def _read_files(path: Path, rank: int, legacy: bool) -> tuple[dict, dict, dict, dict | None]:
    """(weights, optimizer, scheduler, rng) of a checkpoint; :class:`DamagedCheckpoint` when unreadable."""
    try:
        wfile = path / "weights.safetensors"
        if not wfile.is_file():
            raise DamagedCheckpoint(f"{wfile}: file missing")
        weights = load_file(str(wfile))
        opt = _safe_load(path / "optimizer.pt")
        sched = _safe_load(path / "scheduler.pt")
        rng_file = path / f"rng-{rank}.pt"
        rng = _safe_load(rng_file, legacy_numpy=legacy) if rng_file.exists() else None
    except DamagedCheckpoint:
        raise
    except Exception as e:  # safetensors / zip / unpickler errors all mean: this checkpoint cannot be read
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DamagedCheckpoint(f"{path}: unreadable ({type(e).__name__}: {msg[:200]})") from None
    return weights, opt, sched, rng


def load_checkpoint(path: str | Path, task: torch.nn.Module, optimizer, scheduler, *, rank: int = 0,
                    world_size: int = 1) -> dict:
    """Restore task/optimizer/scheduler/RNG from ``path``; returns the saved trainer state.

    Raises :class:`DamagedCheckpoint` when a file cannot be read (nothing is changed then) and
    :class:`CheckpointError` when the checkpoint does not fit (other model or process count)."""
    path = Path(path)
    state = read_state(path)
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(f"{path}: saved with {state.get('world_size')} processes, resuming with {world_size}; "
                              "resume with the same number of processes (the data order depends on it)")
    weights, opt, sched, rng = _read_files(path, rank, legacy=state.get("format", 1) < 2)
    own = checkpoint_state(task)  # what the task saves (frozen parts are left out by the task)
    missing = [k for k in own if k not in weights]
    unexpected = [k for k in weights if k not in own]
    shapes = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{path}: checkpoint does not fit the model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}, other shape {shapes[:3]}); resume with the config it was written "
                              "with, or start over with --overwrite")
    load_checkpoint_state(task, weights)
    optimizer.load_state_dict(opt)
    scheduler.load_state_dict(sched)
    if rng is not None:
        set_rng_state(rng)
    return state


def load_latest_intact(output_dir: str | Path, task: torch.nn.Module, optimizer, scheduler, *, rank: int = 0,
                       world_size: int = 1) -> tuple[Path | None, dict | None]:
    """Load the newest readable checkpoint; damaged newer ones are moved aside to ``*.damaged`` with a
    warning (so they are never picked up or pruned in place of good ones). Returns ``(path, state)``,
    ``(None, None)`` when there is no checkpoint; raises :class:`CheckpointError` when every one is damaged."""
    ckpts = list_checkpoints(output_dir)
    damaged: list[str] = []
    for path in reversed(ckpts):
        try:
            return path, load_checkpoint(path, task, optimizer, scheduler, rank=rank, world_size=world_size)
        except DamagedCheckpoint as e:
            damaged.append(str(e))
            log.warning("--resume: %s; falling back to the previous checkpoint", e)
            if rank == 0:
                aside = path.with_name(path.name + ".damaged")
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(path, aside)
    if damaged:
        raise CheckpointError(f"{Path(output_dir) / CKPT_DIR}: no intact checkpoint ({damaged[0]}); "
                              "start over with --overwrite")
    return None, None
