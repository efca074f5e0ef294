"""Typed outputs shared by every detector adapter (the only view of a model the distiller ever sees).

Shapes: L decoder stages, B images, N queries, C classes, d hidden width, levels m = 1..M.
Boxes are always normalised (cx, cy, w, h) in [0, 1], relative to the un-padded image.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class QueryGroup:
    """Queries to decode, in the form the family uses.

    content:   [B or 1, N, d] initial decoder content (target) or None (family starts from zeros)
    position:  [B or 1, N, d] positional query embedding, or None
    reference: [B or 1, N, 2|4] reference points / anchors (sigmoid space), or None
    """
    content: Tensor | None = None
    position: Tensor | None = None
    reference: Tensor | None = None

    @property
    def num_queries(self) -> int:
        for t in (self.content, self.position, self.reference):
            if t is not None:
                return t.shape[-2]
        raise ValueError("empty QueryGroup")


@dataclass
class GroupOutput:
    """Per-stage predictions of one query group; ``state``: family-private tensors its
    :meth:`~detrdistill.models.adapters.base.DetectorAdapter.group_family_losses` reads (e.g. D-FINE's box
    distributions), empty for most families."""
    logits: Tensor      # [L, B, N, C]
    boxes: Tensor       # [L, B, N, 4] normalised cxcywh
    embeddings: Tensor  # [L, B, N, d]
    state: dict = field(default_factory=dict)


def class_probs(logits: Tensor, activation: str) -> Tensor:
    """Per-class probabilities [..., C] from logits of either activation (softmax drops no-object)."""
    if activation == "softmax":
        return logits.softmax(-1)[..., :-1]
    return logits.sigmoid()


@dataclass
class DetectorOutput:
    """One forward of an adapted model.

    logits / boxes / embeddings: per decoder stage, see :class:`GroupOutput`.
    encoder_inputs:  per level [B, d, H_m, W_m] (backbone + input projection)
    encoder_outputs: per level [B, d, H_m, W_m] (memory split back into levels)
    feature_masks:   per level [B, H_m, W_m] bool, True on real (non-padding) pixels
    queries:         the learned query table(s) the decoder starts from (batch dim 1)
    loss / loss_dict: the detection loss when targets were given (loss_dict keys without "loss/")
    assignments:     [L, B, N] long, GT index matched to each query, -1 when unmatched (targets given)
    state:           family-private tensors needed to decode an extra group (memory, shapes, ...)
    """
    logits: Tensor
    boxes: Tensor
    embeddings: Tensor
    encoder_inputs: list[Tensor] = field(default_factory=list)
    encoder_outputs: list[Tensor] = field(default_factory=list)
    feature_masks: list[Tensor] = field(default_factory=list)
    queries: QueryGroup | None = None
    loss: Tensor | None = None
    loss_dict: dict[str, Tensor] = field(default_factory=dict)
    assignments: Tensor | None = None
    state: dict = field(default_factory=dict, repr=False)
    class_activation: str = "sigmoid"  # "sigmoid" (focal-style, C logits) or "softmax" (C + 1, last = no-object)

    @property
    def num_stages(self) -> int:
        return self.logits.shape[0]
