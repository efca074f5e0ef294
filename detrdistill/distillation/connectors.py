"""Connectors: the small trainable modules that map one model's representation onto the other's.

They are trained with the student, saved in training checkpoints and never exported (the exported student is the
plain transformers model):

* :func:`level_adapters`: per feature-level pair, a 1x1 conv from the student's to the teacher's width (FGD
  ``align`` style), identity where the widths already agree (used by the feature and FitNet terms);
* :class:`~detrdistill.models.query_projection.QueryProjection`: teacher queries -> the student's query form
  (used by the query-prior term; built by :func:`build_query_projection` from the two adapters' query forms);
* :func:`projection_head`: the contrastive term's MLP head onto a shared embedding space.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..models.query_projection import QueryProjection, build_query_projection

__all__ = ["level_adapters", "projection_head", "QueryProjection", "build_query_projection"]


def level_adapters(student_channels: Sequence[int], teacher_channels: Sequence[int],
                   level_pairs: Sequence[tuple[int, int]]) -> nn.ModuleList:
    """One module per (student level, teacher level) pair: Conv2d 1x1 c_S -> c_T, or Identity when c_S == c_T."""
    return nn.ModuleList(
        nn.Conv2d(student_channels[s], teacher_channels[t], kernel_size=1)
        if student_channels[s] != teacher_channels[t] else nn.Identity()
        for s, t in level_pairs)


def projection_head(in_dim: int, dim: int = 512) -> nn.Sequential:
    """Linear(in -> dim), Linear(dim, dim) - BN1d - ReLU - Linear(dim, dim) (L2 normalisation applied by the caller)."""
    return nn.Sequential(nn.Linear(in_dim, dim), nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim))
