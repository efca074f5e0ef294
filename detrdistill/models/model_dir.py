"""Check a saved model directory before transformers opens it, so a bad one is one line, not a traceback.

A model directory (a teacher, ``eval --model``, a run's ``model/``) needs ``config.json`` (a JSON
object) and its weights: ``model.safetensors`` (or a sharded ``model.safetensors.index.json``, or a
legacy ``pytorch_model.bin``). A missing, empty or truncated ``model.safetensors`` is detected from
its header (safetensors checks that the header's tensors cover the file exactly) without reading the
tensors, and raises :class:`ModelDirError` naming the file and what to do. Weights that pass the check and still
fail to load are described in one line by :func:`weights_failure`.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

from detrdistill.errors import DetrDistillError


class ModelDirError(DetrDistillError, ValueError):
    """A model directory whose config, weights or image processor cannot be read."""


class ModelDirMissing(ModelDirError, FileNotFoundError):
    """A model directory without config.json or weights."""


def _check_safetensors(f: Path) -> None:
    from safetensors import safe_open

    if f.stat().st_size == 0:
        raise ModelDirError(f"{f}: weights file is empty (an interrupted copy or export?); copy or export the "
                            "model again")
    try:
        with safe_open(str(f), "pt") as fh:
            fh.keys()
    except Exception as e:  # SafetensorError: truncated / not a safetensors file
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelDirError(f"{f}: weights file is damaged or truncated ({msg}); copy or export the model "
                            "again") from None


def check_model_dir(path: str | Path) -> None:
    """Raise :class:`ModelDirError` unless ``path`` holds a readable config.json and weights file."""
    p = Path(path)
    cfg = p / "config.json"
    if not cfg.is_file():
        raise ModelDirMissing(f"{cfg}: not found; {p} is not a saved model directory (expected config.json and "
                            "model.safetensors, e.g. <run>/model)")
    try:
        if not isinstance(json.loads(cfg.read_text()), dict):
            raise ValueError("not a JSON object")
    except (ValueError, OSError) as e:
        raise ModelDirError(f"{cfg}: unreadable ({type(e).__name__}); copy or export the model again") from None
    single, index = p / "model.safetensors", p / "model.safetensors.index.json"
    if single.is_file():
        _check_safetensors(single)
    elif index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError, OSError, TypeError, AttributeError):
            raise ModelDirError(f"{index}: unreadable; copy or export the model again") from None
        for shard in shards:
            if not (p / shard).is_file():
                raise ModelDirMissing(f"{p / shard}: weights shard not found; copy the model again")
            _check_safetensors(p / shard)
    elif not (p / "pytorch_model.bin").is_file():
        raise ModelDirMissing(f"{single}: not found; the model directory has no weights (copy or export it again)")


def weights_failure(e: BaseException) -> str:
    """One line for a weights file transformers could not load (shapes that do not fit config.json, a pickled
    ``pytorch_model.bin`` that ``torch.load(weights_only=True)`` refuses, a damaged file)."""
    text = str(e)
    if "mismatched" in text or "size mismatch" in text:
        return "its weights do not fit its config.json (other tensor shapes)"
    if isinstance(e, pickle.UnpicklingError) or "weights_only" in text or "Weights only" in text:
        return "its pytorch_model.bin holds pickled objects other than tensors, which are never loaded (unsafe)"
    first = (text.strip().splitlines() or [type(e).__name__])[0]
    return f"its weights cannot be loaded ({type(e).__name__}: {first[:160]})"
