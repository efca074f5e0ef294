"""Contrastive query-relation loss ("CL" in the official config name).  Off by default.

Per student stage l: the student decoder embeddings of the matched queries, ``s_i = H^S_{l,i}``, are paired with the
teacher embedding of the prediction the logits distillation matched them to, ``t_i = H^T_{stage_map[l], σ_l(i)}``.
Both go through their own projection head (:func:`~.connectors.projection_head`: Linear(d -> 512), then Linear(512, 512) - BN1d - ReLU - Linear(512, 512),
then L2 normalisation; separate weights for teacher and student, both trainable, dropped at export) and

    logits_ab = g_T(t_a) . g_S(s_b) / τ,   loss_l = CE(logits, a -> a)   (τ = 0.07)

over the P_l matched pairs of the local batch (all images of the stage together, like the official B * N rows).
Only matched pairs enter, so unequal query counts work (the official code needs N_S = N_T).  A stage with fewer
than 2 pairs contributes 0 (BatchNorm and a 1-way softmax are meaningless there).  Total = weight * Σ_l loss_l.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .connectors import projection_head


class ContrastiveDistillLoss(nn.Module):
    """InfoNCE between matched student / teacher decoder embeddings (see the module docstring)."""

    def __init__(self, student_dim: int, teacher_dim: int, proj_dim: int = 512, temperature: float = 0.07,
                 weight: float = 0.2):
        super().__init__()
        self.student_head = projection_head(student_dim, proj_dim)
        self.teacher_head = projection_head(teacher_dim, proj_dim)
        self.temperature, self.weight = temperature, weight

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, weight={self.weight}"

    def forward(self, student_embeddings: Tensor, teacher_embeddings: Tensor, matching: Tensor,
                stage_map: list[int]) -> Tensor:
        """student_embeddings [L_S, B, N_S, d_S] (with grad), teacher_embeddings [L_T, B, N_T, d_T],
        matching [L_S, B, N_S] teacher query per student query (-1 = unmatched), stage_map len L_S -> scalar."""
        L_S = student_embeddings.shape[0]
        if len(stage_map) != L_S or matching.shape != student_embeddings.shape[:3]:
            raise ValueError("matching / stage_map do not fit the student embeddings")
        head_dtype = self.student_head[0].weight.dtype
        total = student_embeddings.new_zeros((), dtype=torch.float32)
        for l, t_stage in enumerate(stage_map):
            b_idx, n_idx = (matching[l] >= 0).nonzero(as_tuple=True)
            if b_idx.numel() < 2:
                continue
            s = student_embeddings[l, b_idx, n_idx].to(head_dtype)                       # [P, d_S]
            t = teacher_embeddings[t_stage, b_idx, matching[l, b_idx, n_idx]].detach().to(head_dtype)
            zs = F.normalize(self.student_head(s), dim=-1)
            zt = F.normalize(self.teacher_head(t), dim=-1)
            logits = (zt @ zs.t()).float() / self.temperature                            # [P, P] teacher rows
            target = torch.arange(logits.shape[0], device=logits.device)
            total = total + F.cross_entropy(logits, target)
        return self.weight * total
