"""Baseline distillation losses for comparison (off by default).

* :class:`FitNetLoss` (Romero et al. 2015): plain MSE between the adapted student features and the teacher
  features, over all real pixels and channels, no mask.  Same adapters / level pairing / resizing as
  :class:`~detrdistill.distillation.feature.FeatureDistillLoss` (it is one, called without masks).
* :class:`LogitKDLoss` (Hinton et al. 2015, made set-aware): the student's LAST stage is Hungarian-matched once to
  the teacher's last stage with the same cost as the logits distillation (soft BCE 1 + L1 5 + GIoU 2), then the
  class distributions of matched pairs are distilled with temperature τ and NO box term:
  both softmax -> ``τ² KL(softmax(z_T/τ) || softmax(z_S/τ))`` over C + 1 classes; otherwise the per-class binary
  ``τ² Σ_c KL(Bern(σ_T) || Bern(σ_S))`` on the foreground probabilities (sigmoid of logits / τ, or the softmax
  foreground probabilities at temperature τ for a softmax model).  KL rather than cross-entropy, so the loss is
  exactly 0 when the student equals the teacher.  Normalised by the number of matched pairs.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .feature import FeatureDistillLoss
from .logits import DEFAULT_MATCH_COSTS, MatchCosts, _gather_rows, match_student_to_teacher, soft_class_terms


class FitNetLoss(FeatureDistillLoss):
    """``FitNetLoss(student_channels, teacher_channels, weight)(student_feats, teacher_feats, valid_masks)``."""

    def forward(self, student_features: Sequence[Tensor], teacher_features: Sequence[Tensor],  # type: ignore[override]
                valid_masks: Sequence[Tensor] | None = None, affine: Tensor | None = None) -> Tensor:
        return super().forward(student_features, teacher_features, None, valid_masks, affine)


class LogitKDLoss(nn.Module):
    """Vanilla logit KD on Hungarian-matched last-stage queries (see the module docstring)."""

    def __init__(self, temperature: float = 1.0, weight: float = 1.0, costs: MatchCosts = DEFAULT_MATCH_COSTS):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        self.temperature, self.weight = temperature, weight
        self.costs = MatchCosts(*costs)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}"

    def forward(self, student_logits: Tensor, student_boxes: Tensor, teacher_logits: Tensor, teacher_boxes: Tensor,
                *, student_activation: str = "sigmoid", teacher_activation: str = "sigmoid",
                matching: Tensor | None = None) -> Tensor:
        """student_* [L_S, B, N_S, .], teacher_* [L_T, B, N_T, .]; only the last stages are used.
        ``matching`` [B, N_S] (last student stage -> last teacher stage) may be given to skip the matching."""
        zs, zt = student_logits[-1:], teacher_logits[-1:].detach()
        if matching is None:
            matching = match_student_to_teacher(zs, student_boxes[-1:], zt, teacher_boxes[-1:], [0],
                                                student_activation, teacher_activation, *self.costs)[0]
        tau = self.temperature
        terms = soft_class_terms(zs[0] / tau, student_activation, zt[0] / tau, teacher_activation)
        matched = matching >= 0                                          # [B, N_S]
        p = _gather_rows(terms.target, matching.clamp(min=0))            # [B, N_S, C']
        if terms.mode == "ce":
            kl = (p * (p.clamp(min=1e-12).log() - terms.log_q)).sum(-1)
        else:
            log_p, log_1mp = p.clamp(min=1e-12).log(), (1 - p).clamp(min=1e-12).log()
            kl = (p * (log_p - terms.log_q) + (1 - p) * (log_1mp - terms.log_1mq)).sum(-1)
        kl = torch.where(matched, kl, torch.zeros_like(kl))
        return self.weight * tau * tau * kl.sum() / matched.sum().clamp(min=1)
