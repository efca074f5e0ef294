"""Atomic training checkpoints: everything needed to continue a run exactly, and nothing that runs code.

Layout of ``<output_dir>/checkpoints/step-<N>/`` (format 2)::

    weights.safetensors   the task's ``checkpoint_state_dict`` (see :mod:`detrdistill.engine.task`)
    optimizer.pt          optimizer state     } tensors + plain python values only: read with
    scheduler.pt          lr scheduler state  } ``torch.load(weights_only=True)``, which refuses to
    rng-<rank>.pt         python / numpy / torch (cpu + cuda) generator states, per process, as
                          tensors and lists (see :func:`rng_state`)
    grad_scaler.pt        fp16 mixed precision only: the gradient scaler's scale and growth tracker
    state.json            {"step", "epoch", "elapsed_s", "format": 2, "files": {name: sha256},
                           "identity": {"data": ..., "teacher": ...}, ...}; written last

Opening a checkpoint folder from elsewhere therefore cannot execute anything: no file is unpickled
beyond plain containers and tensors. Format 1 (no ``format`` key: numpy arrays pickled in ``rng-*.pt``)
still loads: its numpy state is read with only numpy's array-rebuilding functions allowed.

A checkpoint is written into ``step-<N>.tmp`` and renamed when complete, so a crash never leaves a
half-written checkpoint that ``--resume`` could pick up (a second save of one step moves the first aside to
``step-<N>.replaced`` until the new one is in, so a crash between the renames still leaves that step); a write
that fails (a full disk: whatever torch or safetensors raise) removes ``step-<N>.tmp`` and is one line
(:func:`detrdistill.io_atomic.write_guard`).
Weights or optimizer state holding NaN / inf are never written: the run stops with
:class:`~detrdistill.errors.NonFiniteLossError` instead. ``state.json`` lists the SHA-256 of every other file
and the run's identity (:mod:`detrdistill.engine.run_identity`: the training data listing, the teacher).

``--resume`` walks the checkpoints newest first: one that cannot be read or is not what was written
(truncated, empty or missing file, bad json, a checksum that does not match, NaN / inf values, an
optimizer or scheduler state of another structure) is moved aside to ``step-<N>.damaged`` with a warning
and the previous one is used (:func:`load_latest_intact`). A checkpoint that reads fine but does not fit
the model, or was written for other training data or another teacher, is refused (:class:`CheckpointError`).
"""
from __future__ import annotations

import hashlib
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
from detrdistill.errors import CheckpointError, NonFiniteLossError
from detrdistill.io_atomic import fsync_dir, tensor_bytes, write_atomic, write_guard
from detrdistill.state_loading import state_mismatch

log = logging.getLogger("detrdistill")

CKPT_DIR = "checkpoints"
FORMAT = 2
_STEP_DIR = re.compile(r"^step-\d+$")
_REPLACED = ".replaced"


class DamagedCheckpoint(CheckpointError):
    """A checkpoint whose files cannot be read (truncated, empty, missing, bad json)."""


SCALER_FILE = "grad_scaler.pt"  # fp16 only: the gradient scaler's state

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


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def first_non_finite(tensors, prefix: str = "") -> str | None:
    """Name of the first floating tensor inside ``tensors`` (nested dicts / lists) holding NaN or inf, else None."""
    if torch.is_tensor(tensors):
        finite = not tensors.is_floating_point() or bool(torch.isfinite(tensors).all())
        return None if finite else (prefix or "tensor")
    if isinstance(tensors, dict):
        items = tensors.items()
    elif isinstance(tensors, (list, tuple)):
        items = enumerate(tensors)
    else:
        return None
    for k, v in items:
        bad = first_non_finite(v, f"{prefix}.{k}" if prefix else str(k))
        if bad is not None:
            return bad
    return None


def save_checkpoint(output_dir: str | Path, task: torch.nn.Module, optimizer, scheduler, state: dict,
                    *, rank: int = 0, world_size: int = 1, keep: int = 2, barrier=None,
                    identity: dict | None = None, scaler=None) -> Path:
    """Write ``checkpoints/step-<step>`` atomically. Every process calls it (each saves its RNG state);
    rank 0 writes the shared files, their checksums and ``identity`` into ``state.json``, then renames.
    ``scaler``: fp16's gradient scaler (``accelerator.scaler``), saved as ``grad_scaler.pt`` when given.
    ``barrier`` synchronises processes when given. Non-finite weights or optimizer state are refused
    (:class:`NonFiniteLossError`, nothing written); a failed write is one line and leaves no ``.tmp``."""
    root = Path(output_dir) / CKPT_DIR
    final = root / f"step-{state['step']:08d}"
    tmp = root / f"step-{state['step']:08d}.tmp"
    opt_state = optimizer.state_dict()
    # every process checks (and refuses) alike: the weights and optimizer state are the same on all of them
    bad = first_non_finite(checkpoint_state(task)) or first_non_finite(opt_state.get("state", {}), "optimizer")
    if bad is not None:
        raise NonFiniteLossError(f"step {state['step']}: {bad} holds NaN or inf (training diverged); checkpoint "
                                 f"not written. Lower optim.lr or raise optim.warmup_steps and start over with "
                                 "--overwrite")
    weights = _state_to_save(task) if rank == 0 else {}
    need = tensor_bytes(weights) + tensor_bytes(opt_state) + (1 << 16)
    with write_guard(root, f"checkpoint {final.name}", need=need, cleanup=[tmp] if rank == 0 else []):
        if rank == 0:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        if barrier:
            barrier()
        torch.save(rng_state(), tmp / f"rng-{rank}.pt")
        if rank == 0:
            save_file(weights, str(tmp / "weights.safetensors"))
            torch.save(opt_state, tmp / "optimizer.pt")
            torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            if scaler is not None:  # its scale and growth tracker: a resume must not restart them at 65536 / 0
                torch.save(scaler.state_dict(), tmp / SCALER_FILE)
        if barrier:
            barrier()
        if rank == 0:
            files = {}
            for f in sorted(tmp.iterdir()):  # make the bytes durable before the rename publishes them
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
                files[f.name] = sha256_file(f)
            write_atomic(tmp / "state.json", json.dumps({**state, "world_size": world_size, "format": FORMAT,
                                                         "files": files, "identity": identity or {}}, indent=1))
            # a same-step checkpoint (a time-budget stop right after a periodic save) is moved aside, not
            # deleted first: a crash between the two steps still leaves one published copy of this step
            replaced = final.with_name(final.name + _REPLACED)
            if final.exists():
                shutil.rmtree(replaced, ignore_errors=True)
                os.replace(final, replaced)
            os.replace(tmp, final)
            fsync_dir(root)  # the rename itself survives a power cut
            shutil.rmtree(replaced, ignore_errors=True)
    if rank == 0:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    if barrier:
        barrier()
    return final


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Published checkpoints (``step-<N>`` with a ``state.json``), oldest first; ``*.tmp`` and
    ``*.damaged`` folders are left out. A ``step-<N>.replaced`` (the copy a same-step save moved aside, left
    by a crash before its successor was renamed in) stands for ``step-<N>`` when that is missing."""
    root = Path(output_dir) / CKPT_DIR
    if not root.is_dir():
        return []
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir(), key=lambda q: q.name.endswith(_REPLACED)):  # step-<N> first
        name = p.name[:-len(_REPLACED)] if p.name.endswith(_REPLACED) else p.name
        if p.is_dir() and _STEP_DIR.match(name) and (p / "state.json").is_file():
            found.setdefault(name, p)
    return [found[k] for k in sorted(found)]


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


def required_files(rank: int) -> tuple[str, ...]:
    return ("weights.safetensors", "optimizer.pt", "scheduler.pt", f"rng-{rank}.pt")


def verify_files(path: Path, state: dict, rank: int) -> None:
    """Every file this process needs is present and, when ``state.json`` lists checksums (``files``), every listed
    file has the SHA-256 it was written with; :class:`DamagedCheckpoint` naming the file otherwise."""
    files = state.get("files")
    listed = files if isinstance(files, dict) else {}
    for name in dict.fromkeys([*required_files(rank), *listed]):
        f = path / name
        if not f.is_file():
            raise DamagedCheckpoint(f"{f}: file missing")
        if name in listed and sha256_file(f) != listed[name]:
            raise DamagedCheckpoint(f"{f}: checksum does not match state.json (the file changed or was damaged "
                                    "after it was written)")


def _read_files(path: Path, rank: int, legacy: bool) -> tuple[dict, dict, dict, dict]:
    """(weights, optimizer, scheduler, rng) of a checkpoint; :class:`DamagedCheckpoint` when unreadable."""
    try:
        weights = load_file(str(path / "weights.safetensors"))
        opt = _safe_load(path / "optimizer.pt")
        sched = _safe_load(path / "scheduler.pt")
        rng = _safe_load(path / f"rng-{rank}.pt", legacy_numpy=legacy)
    except DamagedCheckpoint:
        raise
    except Exception as e:  # safetensors / zip / unpickler errors all mean: this checkpoint cannot be read
        msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DamagedCheckpoint(f"{path}: unreadable ({type(e).__name__}: {msg[:200]})") from None
    bad = first_non_finite(weights) or first_non_finite(opt.get("state", {}) if isinstance(opt, dict) else {},
                                                        "optimizer")
    if bad is not None:
        raise DamagedCheckpoint(f"{path}: {bad} holds NaN or inf; not a state to resume from")
    return weights, opt, sched, rng


def _check_optimizer_state(path: Path, saved, optimizer) -> None:
    """The saved optimizer state has this optimizer's structure (groups, parameters per group)."""
    own = optimizer.state_dict()
    groups = saved.get("param_groups") if isinstance(saved, dict) else None
    fits = isinstance(saved, dict) and set(saved) == set(own) and isinstance(saved.get("state"), dict) and \
        isinstance(groups, list) and len(groups) == len(own["param_groups"]) and \
        all(isinstance(g, dict) and len(g.get("params", ())) == len(o["params"])
            for g, o in zip(groups, own["param_groups"]))
    if not fits:
        raise DamagedCheckpoint(f"{path / 'optimizer.pt'}: does not hold this optimizer's state (other structure)")


def _check_scheduler_state(path: Path, saved, scheduler) -> None:
    if not isinstance(saved, dict) or set(saved) != set(scheduler.state_dict()):
        raise DamagedCheckpoint(f"{path / 'scheduler.pt'}: does not hold this scheduler's state (other structure)")


def load_checkpoint(path: str | Path, task: torch.nn.Module, optimizer, scheduler, *, rank: int = 0,
                    world_size: int = 1, identity: dict | None = None, scaler=None) -> dict:
    """Restore task/optimizer/scheduler/RNG from ``path``; returns the saved trainer state.

    Raises :class:`DamagedCheckpoint` when a file is missing, unreadable, not what was written (checksum),
    non-finite or of another structure (nothing is changed then), and :class:`CheckpointError` when the
    checkpoint does not fit (other model or process count) or was written for another ``identity`` (training
    data, teacher: :func:`detrdistill.engine.run_identity.check_identity`)."""
    from detrdistill.engine.run_identity import check_identity

    path = Path(path)
    state = read_state(path)
    if state.get("world_size", 1) != world_size:
        raise CheckpointError(f"{path}: saved with {state.get('world_size')} processes, resuming with {world_size}; "
                              "resume with the same number of processes (the data order depends on it)")
    check_identity(path, state.get("identity"), identity)
    verify_files(path, state, rank)
    weights, opt, sched, rng = _read_files(path, rank, legacy=state.get("format", 1) < 2)
    problem = state_mismatch(checkpoint_state(task), weights)  # what the task saves (not its frozen parts)
    if problem:  # before the optimizer is touched
        raise CheckpointError(f"{path}: checkpoint does not fit the model ({problem}); resume with the config it was "
                              "written with, or start over with --overwrite")
    _check_optimizer_state(path, opt, optimizer)
    _check_scheduler_state(path, sched, scheduler)
    scaler_state = _safe_load(path / SCALER_FILE) if scaler is not None and (path / SCALER_FILE).is_file() else None
    try:
        optimizer.load_state_dict(opt)
        scheduler.load_state_dict(sched)
        if scaler_state is not None:  # a checkpoint without one (bf16 / fp32, or older) keeps the scaler's start
            scaler.load_state_dict(scaler_state)
        set_rng_state(rng)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError, AttributeError) as e:
        raise DamagedCheckpoint(f"{path}: optimizer, scheduler or RNG state does not load ({type(e).__name__}: "
                                f"{str(e).splitlines()[0][:160] if str(e) else ''})") from None
    load_checkpoint_state(task, weights)
    return state


def load_latest_intact(output_dir: str | Path, task: torch.nn.Module, optimizer, scheduler, *, rank: int = 0,
                       world_size: int = 1, identity: dict | None = None,
                       scaler=None) -> tuple[Path | None, dict | None]:
    """Load the newest intact checkpoint; damaged newer ones are moved aside to ``*.damaged`` with a
    warning (so they are never picked up or pruned in place of good ones). Returns ``(path, state)``,
    ``(None, None)`` when there is no checkpoint; raises :class:`CheckpointError` when every one is damaged
    or one was written for another ``identity`` (see :func:`load_checkpoint`)."""
    ckpts = list_checkpoints(output_dir)
    damaged: list[str] = []
    for path in reversed(ckpts):
        try:
            return path, load_checkpoint(path, task, optimizer, scheduler, rank=rank, world_size=world_size,
                                         identity=identity, scaler=scaler)
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
