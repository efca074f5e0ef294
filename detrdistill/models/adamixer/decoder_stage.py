"""One AdaMixer decoder stage: self-attention among the queries, adaptive 3D sampling, adaptive mixing, FFN, and the
stage's own classification and box-refinement heads (AdaMixer's stages do not share heads).

Per stage, with content ``q`` [B, N, D] and boxes ``xyzr`` [B, N, 4] (pixels):

1. ``x = q + PE(box)``; ``q = LN(x + MHA(x, x, x, bias))``, bias ``= tau_h * log(IoF + 1e-7)`` per head (the
   fraction of query i's box covered by query j's; learnable ``tau_h``, computed from detached boxes);
2. offsets ``= Linear(q)`` -> ``G * P_in`` 3D points around the box -> :func:`sample_3d`;
3. ``q = LN(AdaptiveMixing(sampled, q))`` (residual inside), then ``q = LN(q + FFN(q))``;
4. logits ``= fc_cls(relu(LN(Linear(q))))``, ``delta = fc_reg(relu(LN(Linear(q))))`` and
   ``xyzr' = refine(xyzr, delta)``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor, nn

from .box_coding import box_position_encoding, iof_matrix, refine_xyzr, xyzr_to_cxcywh
from .configuration_adamixer import AdaMixerConfig
from .mixing import AdaptiveMixing
from .sampling import make_sample_points, sample_3d

__all__ = ["AdaMixerDecoderStage", "StageOutput"]


@dataclass
class StageOutput:
    content: Tensor   # [B, N, D] updated query content
    xyzr: Tensor      # [B, N, 4] refined boxes (pixels)
    logits: Tensor    # [B, N, C]
    boxes: Tensor     # [B, N, 4] refined boxes, normalised cxcywh (unclamped)


def _head_branch(d: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, d), nn.LayerNorm(d), nn.ReLU())


class AdaMixerDecoderStage(nn.Module):
    def __init__(self, config: AdaMixerConfig):
        super().__init__()
        d, g, p = config.d_model, config.n_groups, config.in_points
        self.d_model, self.n_groups, self.in_points = d, g, p
        self.num_heads = config.decoder_attention_heads
        self.level_tau = float(config.level_tau)
        self.self_attn = nn.MultiheadAttention(d, self.num_heads, dropout=config.dropout, batch_first=True)
        self.self_attn_norm = nn.LayerNorm(d)
        self.iof_tau = nn.Parameter(torch.ones(self.num_heads))
        self.sampling_offset_generator = nn.Linear(d, g * p * 3)
        self.mixing = AdaptiveMixing(d, d, p, config.out_points, g)
        self.mixing_norm = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, config.decoder_ffn_dim), nn.ReLU(), nn.Dropout(config.dropout),
                                 nn.Linear(config.decoder_ffn_dim, d), nn.Dropout(config.dropout))
        self.ffn_norm = nn.LayerNorm(d)
        self.class_branch = _head_branch(d)
        self.class_embed = nn.Linear(d, config.num_labels)
        self.bbox_branch = _head_branch(d)
        self.bbox_embed = nn.Linear(d, 4)
        self.prior_prob = float(config.prior_prob)

    @torch.no_grad()
    def reset_adamixer_parameters(self) -> None:
        """AdaMixer's initialisation of the stage (run after the generic Linear / LayerNorm init)."""
        nn.init.constant_(self.class_embed.bias, -math.log((1 - self.prior_prob) / self.prior_prob))
        nn.init.zeros_(self.bbox_embed.weight)
        nn.init.zeros_(self.bbox_embed.bias)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        nn.init.zeros_(self.sampling_offset_generator.weight)
        bias = self.sampling_offset_generator.bias.view(self.n_groups, self.in_points, 3)
        side = int(round(self.in_points ** 0.5))
        if side * side == self.in_points:  # a regular grid inside the box
            c = torch.linspace(-0.5, 0.5, side + 1)[:-1] + 0.5 / side
            yy, xx = torch.meshgrid(c, c, indexing="ij")
            bias[..., 0].copy_(xx.flatten()[None].expand(self.n_groups, -1))
            bias[..., 1].copy_(yy.flatten()[None].expand(self.n_groups, -1))
        else:
            nn.init.uniform_(bias[..., :2], -0.5, 0.5)
        nn.init.constant_(bias[..., 2], -1.0)
        self.mixing.reset_adamixer_parameters()

    def _attention_bias(self, xyzr: Tensor) -> Tensor:
        """[B, N, 4] -> additive float mask [B * heads, N, N] (``tau_h * log IoF``)."""
        iof = torch.log(iof_matrix(xyzr.detach()) + 1e-7)
        bias = iof[:, None] * self.iof_tau.view(1, -1, 1, 1)
        return bias.flatten(0, 1).to(xyzr.dtype)

    def forward(self, features: Sequence[Tensor], strides: Sequence[float], content: Tensor, xyzr: Tensor,
                image_wh: Tensor) -> StageOutput:
        """features M x [B, D, H_m, W_m]; content [B, N, D]; xyzr [B, N, 4]; image_wh [B, 2] (un-padded, pixels)."""
        pos = box_position_encoding(xyzr_to_cxcywh(xyzr, image_wh).detach(), self.d_model)
        x = content + pos
        attn, _ = self.self_attn(x, x, x, attn_mask=self._attention_bias(xyzr), need_weights=False)
        content = self.self_attn_norm(x + attn)

        B, N, _ = content.shape
        offsets = self.sampling_offset_generator(content).view(B, N, self.n_groups * self.in_points, 3)
        points = make_sample_points(offsets, xyzr)
        sampled = sample_3d(features, strides, points, self.n_groups, self.level_tau)
        content = self.mixing_norm(self.mixing(sampled, content))
        content = self.ffn_norm(content + self.ffn(content))

        logits = self.class_embed(self.class_branch(content))
        new_xyzr = refine_xyzr(xyzr, self.bbox_embed(self.bbox_branch(content)))
        return StageOutput(content=content, xyzr=new_xyzr, logits=logits, boxes=xyzr_to_cxcywh(new_xyzr, image_wh))
