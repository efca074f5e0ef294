"""The dataset's category id of each class of a model, recorded in its ``config.json``.

A model's classes are contiguous labels ``0..C-1`` (``config.id2label``); a COCO dataset names its categories by
its own ids (often 1-based, with gaps). Training records the dataset's id of each label as
``"dataset_category_ids": [id of label 0, id of label 1, ...]`` in the exported ``config.json`` (transformers keeps
the key as a config attribute), so ``predict`` writes results a COCO evaluator scores against the dataset, and the
ONNX export copies them into its metadata. Model folders without it (older runs, hub checkpoints) use the label
index as the category id.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from detrdistill.errors import DetrDistillError
from detrdistill.io_atomic import write_atomic

KEY = "dataset_category_ids"

__all__ = ["KEY", "write_category_ids", "category_ids_of", "category_ids_from_config_dict"]


class CategoryIdsError(DetrDistillError, ValueError):
    """A recorded ``dataset_category_ids`` that does not fit the model's classes."""


def write_category_ids(model_dir: str | Path, category_ids: list[int]) -> None:
    """Add ``dataset_category_ids`` to ``<model_dir>/config.json`` (atomic); one id per label, in label order."""
    path = Path(model_dir) / "config.json"
    config = json.loads(path.read_text())
    n = len(config.get("id2label", {}))
    ids = [int(c) for c in category_ids]
    if len(ids) != n:
        raise CategoryIdsError(f"{path}: {len(ids)} dataset category ids for {n} classes")
    config[KEY] = ids
    write_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def category_ids_from_config_dict(config: dict[str, Any], where: str = "config.json") -> dict[int, int] | None:
    """``{label: dataset category id}`` from a model config's dict, or None when it records none."""
    ids = config.get(KEY)
    if ids is None:
        return None
    n = len(config.get("id2label", {}) or {})
    if not isinstance(ids, list) or len(ids) != n or not all(isinstance(c, int) for c in ids):
        raise CategoryIdsError(f"{where}: {KEY} must be a list of {n} integers (one per class), got {ids!r}; "
                               "export the model again")
    return dict(enumerate(ids))


def category_ids_of(config) -> dict[int, int] | None:
    """``{label: dataset category id}`` of a loaded transformers config, or None when it records none."""
    ids = getattr(config, KEY, None)
    if ids is None:
        return None
    return category_ids_from_config_dict({KEY: list(ids), "id2label": dict(config.id2label)},
                                         f"{type(config).__name__}")
