"""A family's own training recipe (``loss.recipe: family``): the model is called with its labels, so transformers
adds the family's training-only query groups and computes the family's own loss.

What each family gets this way (all inside transformers' model forward and ``transformers.loss``):

* RT-DETR / RT-DETRv2: contrastive denoising groups + varifocal classification (``RTDetrLoss``);
* D-FINE: the same, plus fine-grained localisation (FGL) and decoupled distillation (DDF) over the box
  distributions (``DFineLoss``);
* DEIMv2: matchability-aware classification (MAL) and dense one-to-one matching (``Deimv2Loss``);
* LW-DETR / RF-DETR: grouped one-to-many training queries (``group_detr``; ``LwDetrLoss``).

:class:`FamilyLoss` is what the engine passes as the student's criterion under that recipe. The adapter
(:meth:`~detrdistill.models.adapters.base.DetectorAdapter.forward`) recognises it and runs the family's own training
forward; anything else asks the criterion for a loss with fixed assignments (the query-prior group of DETRDistill)
and gets the wrapped set criterion. Families without a recipe of their own (DETR, Deformable DETR, ...) are trained
by the set criterion under either recipe: transformers' loss for them is the same focal / CE + L1 + GIoU.
"""
from __future__ import annotations

import re
from contextlib import contextmanager
from typing import Callable, Iterator

from torch import Tensor, nn

from ..ops.criterion import SetCriterion

__all__ = ["FamilyLoss", "student_criterion", "summarize_family_losses", "RECIPES"]

RECIPES = ("family", "set")

_PART = re.compile(r"^(?:loss_)?(?P<name>.+?)(?:_(?P<kind>aux|dn|enc)_\d+)?$")


class FamilyLoss(nn.Module):
    """The student's own queries: the family's transformers loss; a call with fixed assignments: ``set_criterion``.

    ``aux_loss``: supervise every decoder stage (transformers' ``config.auxiliary_loss`` during the call).
    """

    def __init__(self, set_criterion: Callable, aux_loss: bool = True):
        super().__init__()
        self.set_criterion = set_criterion
        self.aux_loss = bool(aux_loss)

    def forward(self, *args, **kwargs):
        """Delegates to the set criterion (used for extra query groups with fixed assignments)."""
        return self.set_criterion(*args, **kwargs)

    @contextmanager
    def configured(self, model: nn.Module) -> Iterator[None]:
        """``model.config.auxiliary_loss`` set to :attr:`aux_loss` for the duration of one training forward (it only
        selects which stages the real-time families' losses supervise; their forward is unchanged)."""
        config = model.config
        before = getattr(config, "auxiliary_loss", None)
        config.auxiliary_loss = self.aux_loss
        try:
            yield
        finally:
            config.auxiliary_loss = before

    def extra_repr(self) -> str:
        return f"aux_loss={self.aux_loss}"


def summarize_family_losses(loss_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """transformers' per-stage loss dict -> one entry per loss and query group, for logging.

    ``loss_vfl``, ``loss_vfl_aux_3`` (decoder stages and the encoder's top-k proposals) -> ``vfl``;
    ``loss_vfl_dn_0`` (denoising groups) -> ``dn_vfl``; ``loss_vfl_enc_0`` -> ``enc_vfl``. The entries are the
    family's weighted losses, so they sum to its total loss.
    """
    out: dict[str, Tensor] = {}
    for key, value in loss_dict.items():
        m = _PART.match(key)
        name, kind = m.group("name"), m.group("kind")
        name = f"{kind}_{name}" if kind in ("dn", "enc") else name
        out[name] = out[name] + value if name in out else value
    return out


def student_criterion(loss_cfg, adapter) -> nn.Module:
    """The detection loss of ``adapter`` under a :class:`~detrdistill.config.LossConfig`: the set criterion (CE for
    softmax families, focal otherwise), wrapped in a :class:`~detrdistill.models.family_loss.FamilyLoss` under
    ``loss.recipe: family`` when the family has a training recipe of its own (the wrapped set criterion still serves
    extra query groups). One builder for ``detrdistill train``, ``detrdistill distill`` and the Python API."""
    class_loss = "ce" if adapter.class_activation == "softmax" else "focal"
    criterion = SetCriterion.from_config(loss_cfg, adapter.num_classes, class_loss)
    if loss_cfg.recipe == "family" and adapter.has_family_loss:
        return FamilyLoss(criterion, aux_loss=loss_cfg.aux_loss)
    return criterion
