"""Adapter for ``DeformableDetrForObjectDetection`` (sigmoid / focal classes; multi-scale, ``num_feature_levels``).

Handles single-stage, ``with_box_refine`` and ``two_stage``. What transformers does not expose, written here once:

* per-stage boxes (transformers only builds them inside ``ForObjectDetection.forward``): stage l uses the
  reference of the previous stage (the initial reference for l = 0),
  ``box_l = sigmoid(bbox_embed[l](h_l) + inverse_sigmoid(ref))`` for 4-d references and
  ``sigmoid(bbox_embed[l](h_l) + [inverse_sigmoid(ref), 0, 0])`` for 2-d ones; logits ``class_embed[l](h_l)``.
  Without box refinement every ``class_embed[l]`` / ``bbox_embed[l]`` is the same (tied) module.
* encoder inputs = the ``input_proj[m]`` outputs (incl. the extra stride-2 levels), encoder outputs / masks =
  the decoder's memory kwargs split per level with ``spatial_shapes_list``.
* queries: ``query_position_embeddings.weight`` = ``[position | content]``; the reference points come from the
  model's own ``reference_points`` Linear on the position query unless the group brings its own (2-d or 4-d).
  Two-stage models have no learned table (``query_table`` raises); ``out.queries`` holds the per-image top-k
  proposals (content, position and 4-d reference) the decoder started from.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from .base import (DetectorAdapter, ModuleInputCapture, ModuleOutputCapture, NoQueryTableError, expand_group,
                   inverse_sigmoid, split_levels, split_mask)
from ...errors import ConfigError
from ..families import FamilySpec
from ..hf_config import common_kwargs, resnet_config

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "DeformableDetrAdapter"]

_MEMORY_KEYS = ("encoder_hidden_states", "encoder_attention_mask", "spatial_shapes", "spatial_shapes_list",
                "level_start_index", "valid_ratios")


class DeformableDetrAdapter(DetectorAdapter):
    family = "deformable_detr"
    class_activation = "sigmoid"
    decoder_kwargs = ("inputs_embeds", "object_queries_position_embeddings", "reference_points", *_MEMORY_KEYS)

    @property
    def two_stage(self) -> bool:
        return bool(self.model.config.two_stage)

    @property
    def num_queries(self) -> int:
        cfg = self.model.config
        return int(cfg.two_stage_num_proposals if cfg.two_stage else cfg.num_queries)

    @property
    def num_feature_levels(self) -> int:
        return int(self.model.config.num_feature_levels)

    @property
    def query_form(self) -> dict[str, int]:
        form = {"content": self.d_model, "position": self.d_model}
        if self.two_stage:
            form["reference"] = 4
        return form

    def query_table(self) -> QueryGroup:
        if self.two_stage:
            raise NoQueryTableError("two-stage deformable_detr has no learned query table: its queries are per-image "
                             "top-k encoder proposals (use DetectorOutput.queries of a forward)")
        w = self.model.model.query_position_embeddings.weight  # (N, 2d) = [position | content]
        d = self.d_model
        return QueryGroup(content=w[None, :, d:], position=w[None, :, :d])

    # ------------------------------------------------------------------ heads
    def _decoded(self, hs: Tensor, init_ref: Tensor, inter_ref: Tensor) -> GroupOutput:
        """hs [L, B, N, d]; init_ref [B, N, 2|4]; inter_ref [B, L, N, 2|4] (decoder output) -> per-stage preds."""
        logits, boxes = [], []
        for lvl in range(hs.shape[0]):
            ref = inverse_sigmoid(init_ref if lvl == 0 else inter_ref[:, lvl - 1])
            delta = self.model.bbox_embed[lvl](hs[lvl])
            if ref.shape[-1] == 4:
                coord = delta + ref
            elif ref.shape[-1] == 2:
                coord = torch.cat([delta[..., :2] + ref, delta[..., 2:]], dim=-1)
            else:
                raise ValueError(f"reference points must have 2 or 4 coordinates, got {ref.shape[-1]}")
            logits.append(self.model.class_embed[lvl](hs[lvl]))
            boxes.append(coord.sigmoid())
        return GroupOutput(logits=torch.stack(logits), boxes=torch.stack(boxes), embeddings=hs)

    # ------------------------------------------------------------------ forward
    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        inner = self.model.model
        with ModuleInputCapture(inner.decoder) as cap, ModuleOutputCapture(list(inner.input_proj)) as proj:
            hf = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        kw = cap.require()
        hs = hf.intermediate_hidden_states.transpose(0, 1)  # (B, L, N, d) -> (L, B, N, d)
        pred = self._decoded(hs, kw["reference_points"], hf.intermediate_reference_points)
        shapes = [(int(h), int(w)) for h, w in kw["spatial_shapes_list"]]
        masks = split_mask(kw["encoder_attention_mask"], shapes)
        if self.two_stage:
            queries = QueryGroup(content=kw["inputs_embeds"], position=kw["object_queries_position_embeddings"],
                                 reference=kw["reference_points"])
        else:
            queries = self.query_table()
        state = {"decoder_kwargs": {k: kw[k] for k in _MEMORY_KEYS}}
        if self.two_stage:
            state["enc_outputs_class"] = hf.enc_outputs_class
            state["enc_outputs_coord_logits"] = hf.enc_outputs_coord_logits
        return DetectorOutput(
            logits=pred.logits, boxes=pred.boxes, embeddings=pred.embeddings,
            encoder_inputs=proj.first(),
            encoder_outputs=split_levels(kw["encoder_hidden_states"], shapes),
            feature_masks=masks,
            queries=queries,
            state=state,
        )

    # ------------------------------------------------------------------ extra group
    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        mem = out.state["decoder_kwargs"]
        memory = mem["encoder_hidden_states"]
        g = expand_group(group, memory.shape[0], memory.device, memory.dtype)
        required = ["content", "position"] + (["reference"] if self.two_stage else [])
        self._check_group(g, required)
        ref = g.reference
        if ref is None:
            ref = self.model.model.reference_points(g.position).sigmoid()
        dec_out = self.model.model.decoder(inputs_embeds=g.content, object_queries_position_embeddings=g.position,
                                           reference_points=ref, **mem)
        hs = dec_out.intermediate_hidden_states.transpose(0, 1)
        return self._decoded(hs, ref, dec_out.intermediate_reference_points)


def deformable_config_kwargs(cfg: "ModelConfig") -> dict:
    if cfg.d_model % 32:
        raise ConfigError(f"model.d_model: deformable_detr needs a multiple of 32 (GroupNorm(32)), got {cfg.d_model}")
    kw = dict(common_kwargs(cfg), d_model=cfg.d_model, num_feature_levels=cfg.num_feature_levels,
              with_box_refine=cfg.with_box_refine, two_stage=cfg.two_stage,
              backbone_config=resnet_config(cfg.backbone, cfg.num_feature_levels))
    if cfg.two_stage:
        kw["two_stage_num_proposals"] = cfg.num_queries
    return kw


FAMILY_SPECS = (FamilySpec(name="deformable_detr", adapter=DeformableDetrAdapter,
                           config_class="DeformableDetrConfig", model_class="DeformableDetrForObjectDetection",
                           config_kwargs=deformable_config_kwargs,
                           capabilities=frozenset({"query_table", "multi_scale", "two_stage", "box_refine", "pixel_mask"})),)
