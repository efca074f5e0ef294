"""What a run trains on, as hashes kept in every checkpoint, so ``--resume`` refuses a run whose inputs changed.

The config check of ``--resume`` (:mod:`detrdistill.engine.run_dir`) compares settings, not the files they
name: a teacher folder replaced in place, or a dataset edited under the same path, passes it. Each checkpoint's
``state.json`` therefore holds ``identity``:

* ``data``: SHA-256 of the training listing as the run uses it (after the ``data.defects`` policy: every image's
  id, file name and size, every annotation's image, category and box, the categories) and of each image file's
  byte size;
* one entry per model the task reads (:meth:`~detrdistill.engine.task.TaskType.inputs`, e.g. ``teacher`` for
  ``distill``): SHA-256 of its ``config.json``, weights files and ``preprocessor_config.json`` (a hub id: the files
  in the hub cache).

:func:`check_identity` refuses (one line) a checkpoint written for another identity. Checkpoints written before
identities were recorded have none and are not checked.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from detrdistill.errors import CheckpointError

__all__ = ["data_identity", "model_identity", "run_identity", "check_identity"]

_DATA = "the training data (data.train: its listing or image files)"


def _hash_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)


def data_identity(dataset) -> str:
    """Hash of a :class:`~detrdistill.data.CocoDetection`'s cleaned listing and its image files' sizes."""
    coco = dataset.coco
    listing = {
        "images": [[im["id"], im["file_name"], im["width"], im["height"]] for im in coco["images"]],
        "annotations": [[a["image_id"], a["category_id"], a["bbox"], a.get("iscrowd", 0)] for a in coco["annotations"]],
        "categories": [[c["id"], c["name"]] for c in coco["categories"]],
    }
    h = hashlib.sha256(json.dumps(listing, sort_keys=True, default=str).encode())
    for im in coco["images"]:
        try:
            size = (Path(dataset.image_dir) / im["file_name"]).stat().st_size
        except OSError:
            size = -1
        h.update(f"{im['file_name']}:{size};".encode())
    return h.hexdigest()


def model_identity(name: str) -> str:
    """Hash of a model's config, weights and image processor files (local folder or hub id)."""
    from detrdistill.models.pretrained import resolve_model

    source = resolve_model(name, check_weights=False)
    files = {n: source.find_file(n) for n in ("config.json", "preprocessor_config.json", "model.safetensors")}
    if files["model.safetensors"] is None:  # sharded safetensors, else the legacy pickle-free .bin
        index = source.read_json("model.safetensors.index.json")
        shards = sorted(set(index.get("weight_map", {}).values())) if index else ["pytorch_model.bin"]
        files.update({n: source.find_file(n) for n in shards})
    h = hashlib.sha256()
    for fname, f in files.items():
        if f is not None:
            h.update(f"{fname};".encode())
            _hash_file(h, f)
    return h.hexdigest()


def run_identity(cfg, task, train_ds) -> dict[str, str]:
    """``{"data": ..., <what>: ...}`` of a run of ``task`` (a :class:`~detrdistill.engine.task.TaskType`) about to
    train: its data and each model the task reads (e.g. ``teacher``)."""
    ident = {"data": data_identity(train_ds)}
    for what, _, name in task.inputs(cfg):
        ident[what] = model_identity(name)
    return ident


def check_identity(path: Path, saved: dict | None, current: dict | None) -> None:
    """Raise :class:`CheckpointError` (one line) when checkpoint ``path`` was written for other inputs."""
    if not isinstance(saved, dict) or not current:
        return
    changed = [k for k in sorted(set(saved) & set(current)) if saved[k] != current[k]]
    if changed:
        what = " and ".join(_DATA if k == "data" else f"the {k} (its config, weights or image processor)"
                            for k in changed)
        raise CheckpointError(f"{path}: {what} changed since this checkpoint was written; --resume would continue "
                              "on other inputs. Restore the original files, or start over with --overwrite")
