"""The RT-DETR-family losses of transformers normalised over processes, as the official trainers do.

transformers' ``RTDetrLoss``, ``DFineLoss`` and ``Deimv2Loss`` divide each box-count-normalised term by the number of
ground-truth boxes **of the local batch** (``clamp(n, 1)``); the official RT-DETR / D-FINE / DEIM trainers divide by
the mean count over processes (``clamp(all_reduce(n) / world_size, 1)``). Under DDP, where gradients are averaged
over processes, transformers' choice weighs a process's boxes more when its batch holds fewer of them. In one process
the two agree and nothing here runs.

A term divided by the local count ``c`` becomes the official term when multiplied by
``clamp(c, 1) / clamp(mean_c, 1)``. Which count a term uses (``count_of``):

* ``gt``: the GT boxes of the batch (``num_boxes``), for every term of RT-DETR / RT-DETRv2 and D-FINE, the
  denoising groups' too (they divide by ``num_boxes * dn_num_group``, the same ratio);
* ``union``: DEIMv2's dense one-to-one terms (L1, GIoU, FGL over the union of every stage's matches) divide by the
  union's size ``num_boxes_go``, read from the loss's own ``_get_dense_o2o_indices`` during the forward
  (:func:`capture_union_count`); its MAL and denoising terms use ``gt``;
* none: D-FINE / DEIMv2's decoupled distillation (DDF) is a mean over queries, not divided by a count.

LW-DETR / RF-DETR need none of this: their transformers loss already reduces the count over processes.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import Tensor

from ..ops.criterion import mean_across_processes

__all__ = ["count_of", "capture_union_count", "normalised_over_processes"]

FAMILY_LOSSES = ("RTDetrLoss", "DFineLoss", "Deimv2Loss")
_UNION_TERMS = ("loss_bbox", "loss_giou", "loss_fgl")


def count_of(loss_class: str, key: str, dense_o2o: bool = False) -> str | None:
    """Which count the term ``key`` of transformers' ``loss_class`` divides by: ``gt``, ``union`` or None."""
    if loss_class not in FAMILY_LOSSES:
        raise ValueError(f"{loss_class}: not one of {FAMILY_LOSSES}")
    if "loss_ddf" in key:
        return None
    if loss_class == "Deimv2Loss" and dense_o2o and "_dn_" not in key and key.startswith(_UNION_TERMS):
        return "union"
    return "gt"


@contextmanager
def capture_union_count(enabled: bool) -> Iterator[list[int]]:
    """While active, DEIMv2's loss records the size of its dense one-to-one union (its local ``num_boxes_go``) in
    the yielded list (one entry per loss call); nothing is patched when ``enabled`` is false."""
    counts: list[int] = []
    if not enabled:
        yield counts
        return
    from transformers.loss.loss_deimv2 import Deimv2Loss

    original = Deimv2Loss._get_dense_o2o_indices

    def recording(self, indices, indices_aux_list):
        result = original(self, indices, indices_aux_list)
        counts.append(sum(len(rows) for rows, _ in result))
        return result

    Deimv2Loss._get_dense_o2o_indices = recording
    try:
        yield counts
    finally:
        Deimv2Loss._get_dense_o2o_indices = original


def normalised_over_processes(loss_dict: dict[str, Tensor], loss_class: str, counts: dict[str, float],
                              dense_o2o: bool = False) -> dict[str, Tensor]:
    """``loss_dict`` (transformers' weighted terms, divided by local counts) with each count-normalised term
    rescaled to the mean count over processes. ``counts``: this process's ``gt`` (and for DEIMv2's dense one-to-one
    ``union``) count. One ``all_reduce`` of the counts; every process must call it once per training forward."""
    names = sorted(counts)
    local = torch.tensor([float(counts[n]) for n in names], dtype=torch.float64)
    mean = mean_across_processes(local)  # the set criterion's normaliser too: one all_reduce, at least 1
    ratio = {n: float(local[i].clamp(min=1) / mean[i]) for i, n in enumerate(names)}
    out = {}
    for key, value in loss_dict.items():
        kind = count_of(loss_class, key, dense_o2o)
        out[key] = value if kind is None else value * ratio[kind]
    return out
