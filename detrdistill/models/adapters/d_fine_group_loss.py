"""D-FINE's box-distribution losses (FGL / DDF) for an extra query group with fixed assignments.

D-FINE trains the per-edge box distributions of its decoder with two losses beside class + L1 + GIoU
(``transformers.loss.loss_d_fine.DFineLoss.loss_local``): Fine-Grained Localisation (FGL: a unimodal distribution
focal loss toward the GT edge distances, weighted by IoU, matched queries only) and Decoupled Distillation Focal
(DDF: each layer's distributions toward the last layer's). Its own queries get both on every layer but the last
(transformers' auxiliary outputs). An extra group supervised with class + L1 + GIoU alone (DETRDistill's
query-prior group under the set criterion) leaves its distributions free: measured on the bccd D-FINE pair, the
group's layer-0 distributions put 7x the student's own mass on the two edge bins (0.148 vs 0.021), where the
integral's weights are largest, and the group's box gradient on the first distribution head grew to about 6x
the student's own (docs/distillation.md, "The query-prior group of a D-FINE student").

:func:`group_distribution_losses` applies transformers' own ``loss_local`` to the group, layer by layer, exactly as
D-FINE does for its own auxiliary layers: the group's ``indices`` come from the fixed assignments instead of a
matcher. Everything is in the model's frame (its input, padding included): targets are scaled in as the adapter
does for the family loss (``frame_scale``).

Shapes: B images, L decoder layers, N group queries, K = 4 * (max_num_bins + 1).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["group_distribution_losses", "distribution_loss_module"]


def distribution_loss_module(config) -> nn.Module:
    """transformers' ``DFineLoss`` for ``config`` (D-FINE's or DEIMv2's: the same distribution settings)."""
    from transformers.loss.loss_d_fine import DFineLoss

    return DFineLoss(config)


def _indices(assignments: Tensor) -> list[tuple[Tensor, Tensor]]:
    """[B, N] GT index per query (-1 = none) -> transformers' per-image (query indices, GT indices)."""
    out = []
    for a in assignments:
        q = torch.nonzero(a >= 0).squeeze(1)
        out.append((q, a[q]))
    return out


def group_distribution_losses(loss: nn.Module, state: dict, logits: Tensor, targets: list[dict], assignments: Tensor,
                              num_boxes: float, fgl_weight: float, ddf_weight: float) -> dict[str, Tensor]:
    """``{"fgl": ..., "ddf": ...}`` (weighted, with grad) of a group decoded by a D-FINE-style decoder.

    loss: :func:`distribution_loss_module`'s module; state: the group's ``corners`` [B, L, N, K],
    ``initial_reference`` [B, L, N, 4] and ``boxes`` [L, B, N, 4] (model frame), ``frame_scale`` [B, 4] or None;
    logits: [L, B, N, C] (the last layer's weight DDF's unmatched queries); targets: the project's (real-image
    fractions); assignments: [L, B, N]; num_boxes: the GT count normaliser of the group's other losses.
    """
    corners, refs, boxes, scale = state["corners"], state["initial_reference"], state["boxes"], state["frame_scale"]
    if scale is not None:
        targets = [{**t, "boxes": t["boxes"] * s.to(t["boxes"])} for t, s in zip(targets, scale)]
    L = corners.shape[1]
    fgl = ddf = corners.sum() * 0
    for layer in range(L - 1):  # D-FINE's auxiliary layers: every one but the last
        out = loss.loss_local({"pred_corners": corners[:, layer], "ref_points": refs[:, layer],
                               "pred_boxes": boxes[layer].clamp(min=0, max=1), "teacher_corners": corners[:, -1],
                               "teacher_logits": logits[-1]},
                              targets, _indices(assignments[layer]), num_boxes)
        fgl = fgl + out["loss_fgl"]
        ddf = ddf + out["loss_ddf"]
    return {"fgl": fgl_weight * fgl, "ddf": ddf_weight * ddf}
