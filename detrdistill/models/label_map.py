"""Fine-tune a checkpoint on a dataset whose classes differ from the checkpoint's: re-head it by class name.

:func:`relabel_model` returns a model of the same architecture whose label map is the dataset's. Every parameter
is copied from the checkpoint except the class-indexed ones (the classification heads, and e.g. RT-DETR's
denoising class embedding), which are found generically: the tensors whose shape changes when the number of
labels does (probed on the meta device, nothing allocated). Along their class dimension:

* a dataset class whose name the checkpoint knows keeps the checkpoint's row (weights and bias);
* a new class keeps the fresh initialisation of the family (e.g. the focal prior bias);
* the rows after the classes (DETR's no-object column, RT-DETR's denoising padding row) are copied in order.

One log line names what was kept and what was reset.
"""
from __future__ import annotations

import copy
import logging
import re

import torch
from torch import Tensor
from transformers import PreTrainedModel

from ..errors import ModelError

log = logging.getLogger("detrdistill")

__all__ = ["relabel_model", "class_indexed_dims", "normalise_id2label"]


def normalise_id2label(id2label: dict) -> dict[int, str]:
    out = {int(k): str(v) for k, v in dict(id2label or {}).items()}
    if sorted(out) != list(range(len(out))):
        raise ModelError(f"id2label keys must be 0..{len(out) - 1}, got {sorted(out)[:10]}...")
    return out


def _with_labels(config, id2label: dict[int, str]):
    cfg = copy.deepcopy(config)
    cfg.id2label = dict(id2label)
    cfg.label2id = {v: k for k, v in id2label.items()}
    cfg.num_labels = len(id2label)
    return cfg


def _meta_shapes(model_cls: type, config) -> dict[str, torch.Size]:
    with torch.device("meta"):
        m = model_cls(config)
    return {k: v.shape for k, v in m.state_dict().items()}


def class_indexed_dims(model: PreTrainedModel) -> dict[str, int]:
    """{state-dict key: class dimension} of every tensor whose shape follows the number of labels."""
    cls, base = type(model), model.config
    plus = _with_labels(base, {i: f"c{i}" for i in range(base.num_labels + 1)})
    have = {k: v.shape for k, v in model.state_dict().items()}
    dims: dict[str, int] = {}
    for key, shape in _meta_shapes(cls, plus).items():
        old = have.get(key)
        if old is None or old == shape:
            continue
        diff = [d for d, (a, b) in enumerate(zip(old, shape)) if a != b]
        if len(old) != len(shape) or len(diff) != 1:
            raise ModelError(f"{cls.__name__}: cannot tell the class dimension of {key} ({tuple(old)} vs "
                             f"{tuple(shape)}); fine-tune on the checkpoint's own classes")
        dims[key] = diff[0]
    return dims


def _row_map(old: dict[int, str], new: dict[int, str], old_len: int, new_len: int) -> list[tuple[int, int]]:
    """(new row, old row) pairs: classes by name, then the extra rows after the classes in order."""
    by_name = {name: i for i, name in old.items()}
    pairs = [(j, by_name[name]) for j, name in new.items() if name in by_name]
    extra_old, extra_new = old_len - len(old), new_len - len(new)
    if extra_old != extra_new:
        raise ModelError(f"class-indexed tensor of {old_len} rows for {len(old)} classes vs {new_len} for {len(new)}")
    pairs += [(len(new) + k, len(old) + k) for k in range(extra_new)]
    return pairs


def relabel_model(model: PreTrainedModel, id2label: dict, source: str = "checkpoint") -> PreTrainedModel:
    """``model`` itself when its label map already equals ``id2label``; else a new model of the same architecture
    with ``id2label``, every weight copied and the classification rows mapped by class name (see module doc)."""
    new = normalise_id2label(id2label)
    old = normalise_id2label(model.config.id2label)
    if new == old:
        return model
    dims = class_indexed_dims(model)
    fresh = type(model)(_with_labels(model.config, new))
    state, target = model.state_dict(), fresh.state_dict()
    merged: dict[str, Tensor] = {}
    for key, value in target.items():
        if key not in dims:
            merged[key] = state[key]
            continue
        d = dims[key]
        out = value.clone()
        for j, i in _row_map(old, new, state[key].shape[d], value.shape[d]):
            out.select(d, j).copy_(state[key].select(d, i))
        merged[key] = out
    fresh.load_state_dict(merged, strict=True)
    fresh.train(model.training)
    kept = [n for n in new.values() if n in set(old.values())]
    reset = [n for n in new.values() if n not in set(old.values())]
    dropped = [n for n in old.values() if n not in set(new.values())]
    log.info("%s: classes differ from the dataset's; classification heads (%s) re-headed by name: kept %d %s, "
             "re-initialised %d %s, dropped %d checkpoint classes%s", source, ", ".join(sorted({re.sub(r"\.\d+", ".*", k.rsplit('.', 1)[0])
             for k in dims})), len(kept), _names(kept), len(reset), _names(reset), len(dropped),
             f" {_names(dropped)}" if dropped else "")
    return fresh


def _names(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return f"[{shown}{', ...' if len(names) > limit else ''}]"
