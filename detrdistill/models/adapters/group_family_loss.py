"""An extra query group (DETRDistill's query prior) trained by the student family's own transformers loss.

RT-DETR, D-FINE and DEIMv2 train their own queries with losses of their own (``transformers.loss``): varifocal
(RT-DETR, D-FINE) or matchability-aware (DEIMv2) classification, whose target is the box's IoU with its GT, L1 +
GIoU, and for D-FINE / DEIMv2 Fine-Grained Localisation (FGL: a distribution focal loss toward the GT edge, matched
queries) and Decoupled Distillation Focal (DDF: each layer's box distributions toward the last layer's) on every
layer but the last (transformers' auxiliary outputs). DETRDistill's query-prior group is supervised with the teacher's
fixed assignments; by default with the project's set criterion (focal + L1 + GIoU). Two measured problems with that on
a D-FINE student (docs/distillation.md, "The query-prior group of a D-FINE student"): nothing constrains the group's
box distributions (their outer bins, where the integral weighs most, took 7x the student's own mass and the group's
box gradient on the first distribution head reached ~6x the student's own), and the group's hard focal class target
pulls the Location Quality Estimator against the student's IoU-aware one (cosine -0.1 to -0.8).

:func:`group_family_losses` applies the family's own loss terms (``get_loss`` of transformers' loss object, with the
group's ``indices`` from the fixed assignments instead of its matcher) layer by layer, weighted by the family's
``weight_dict``: all of them (``distill.query_prior.group_loss=family``) or the distribution terms only, beside the
set criterion (``set_distributions``). Everything is in the model's frame (its input, padding included): targets are
scaled in as the adapter does for the family loss (``frame_scale``).

Shapes: B images, L decoder layers, N group queries, K = 4 * (max_num_bins + 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .base import targets_in_padded_frame

__all__ = ["family_loss_module", "group_family_losses", "DISTRIBUTION_TERMS"]

DISTRIBUTION_TERMS = ("local",)  # transformers' name of FGL + DDF in the D-FINE-style losses


def family_loss_module(class_name: str, config) -> nn.Module:
    """transformers' loss object of a family (``RTDetrLoss``, ``DFineLoss``, ``Deimv2Loss``) for ``config``."""
    import importlib

    module = {"RTDetrLoss": "loss_rt_detr", "DFineLoss": "loss_d_fine", "Deimv2Loss": "loss_deimv2"}[class_name]
    return getattr(importlib.import_module(f"transformers.loss.{module}"), class_name)(config)


def _indices(assignments: Tensor) -> list[tuple[Tensor, Tensor]]:
    """[B, N] GT index per query (-1 = none) -> transformers' per-image (query indices, GT indices)."""
    out = []
    for a in assignments:
        q = torch.nonzero(a >= 0).squeeze(1)
        out.append((q, a[q]))
    return out


def group_family_losses(loss: nn.Module, state: dict, logits: Tensor, targets: list[dict], assignments: Tensor,
                        num_boxes: float, terms: tuple[str, ...]) -> dict[str, Tensor]:
    """The family's weighted losses of a decoded group, summed over layers: ``{"vfl": ..., "bbox": ..., "giou": ...,
    "fgl": ..., "ddf": ...}`` (with grad; the keys ``loss``'s terms produce).

    loss: :func:`family_loss_module`'s object; state: the group's ``boxes`` [L, B, N, 4] (model frame),
    ``frame_scale`` [B, 4] or None and, for a D-FINE-style decoder, ``corners`` [B, L, N, K] and
    ``initial_reference`` [B, L, N, 4]; logits: [L, B, N, C]; targets: the project's (real-image fractions);
    assignments: [L, B, N]; terms: names of ``loss.losses`` to apply (e.g. ``("vfl", "boxes", "local")``).
    """
    boxes, corners = state["boxes"], state.get("corners")
    targets = targets_in_padded_frame(targets, state["frame_scale"])
    L = boxes.shape[0]
    out: dict[str, Tensor] = {}
    for layer in range(L):
        outputs = {"logits": logits[layer], "pred_boxes": boxes[layer].clamp(min=0, max=1)}
        if corners is not None and layer < L - 1:  # D-FINE's auxiliary layers: every one but the last
            outputs.update(pred_corners=corners[:, layer], ref_points=state["initial_reference"][:, layer],
                           teacher_corners=corners[:, -1], teacher_logits=logits[-1])
        indices = _indices(assignments[layer])
        for term in terms:
            if term in DISTRIBUTION_TERMS and "pred_corners" not in outputs:
                continue
            for key, value in loss.get_loss(term, outputs, targets, indices, num_boxes).items():
                name = key.removeprefix("loss_")
                weighted = loss.weight_dict[key] * value
                out[name] = out[name] + weighted if name in out else weighted
    return out
