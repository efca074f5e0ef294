"""Adapter for our ``AdaMixerForObjectDetection`` (:mod:`detrdistill.models.adamixer`; sigmoid / focal classes).

AdaMixer has no encoder, so both feature sources of the contract (``encoder_inputs`` and ``encoder_outputs``) are the
neck outputs (``config.num_feature_levels`` maps of ``d_model`` channels); the masks are the nearest-downsampled
pixel mask. The model reports every stage itself (``intermediate_logits`` / ``_boxes`` / ``_hidden_states``), so
nothing is captured with hooks. Queries: ``{"content": d, "reference": 4}``: the learned content table (before the
decoder's entry LayerNorm) and the initial boxes (normalised cxcywh; AdaMixer's whole-image boxes by default).
An extra group is decoded by the model's own stages over ``state["feature_maps"]`` (:meth:`decode_queries`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ...errors import ModelError
from ..adamixer import AdaMixerConfig, AdaMixerForObjectDetection, register_auto_classes
from ..families import FamilySpec
from ..hf_config import resnet_config
from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from .base import DetectorAdapter, expand_group

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "AdaMixerAdapter"]

class AdaMixerAdapter(DetectorAdapter):
    family = "adamixer"
    class_activation = "sigmoid"

    def _check_model(self) -> None:
        if not hasattr(self.model, "decode_queries") or not hasattr(self.model.model, "query_table"):
            raise ModelError("AdaMixerAdapter needs an AdaMixerForObjectDetection (decode_queries, query_table)")

    @property
    def num_feature_levels(self) -> int:
        return int(self.model.config.num_feature_levels)

    @property
    def query_form(self) -> dict[str, int]:
        return {"content": self.d_model, "reference": 4}

    def query_table(self) -> QueryGroup:
        content, boxes = self.model.model.initial_queries()
        return QueryGroup(content=content, reference=boxes)

    @staticmethod
    def _per_stage(dec) -> GroupOutput:
        """The model's [B, L, N, ...] stage outputs -> the contract's [L, B, N, ...]."""
        return GroupOutput(logits=dec.intermediate_logits.transpose(0, 1),
                           boxes=dec.intermediate_boxes.transpose(0, 1),
                           embeddings=dec.intermediate_hidden_states.transpose(0, 1))

    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        hf = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)  # no labels: the criterion runs outside
        pred = self._per_stage(hf)
        maps = list(hf.feature_maps)
        return DetectorOutput(
            logits=pred.logits, boxes=pred.boxes, embeddings=pred.embeddings,
            encoder_inputs=maps, encoder_outputs=maps, feature_masks=list(hf.feature_masks),
            queries=self.query_table(),
            state={"feature_maps": maps, "image_sizes": hf.image_sizes},
        )

    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        maps = out.state["feature_maps"]
        g = expand_group(group, maps[0].shape[0], maps[0].device, maps[0].dtype)
        self._check_group(g, ("content", "reference"))
        return self._per_stage(self.model.decode_queries(maps, g.content, g.reference, out.state["image_sizes"]))


def adamixer_config_kwargs(cfg: "ModelConfig") -> dict:
    """No encoder (``encoder_layers`` unused); levels C2-C5 plus stride-2 extras. AdaMixer-only sizes
    (``in_points``, ``out_points``, ``n_groups``) go through ``model.hf_overrides``."""
    return dict(num_queries=cfg.num_queries, d_model=cfg.d_model, decoder_layers=cfg.decoder_layers,
                decoder_ffn_dim=cfg.ffn_dim, decoder_attention_heads=cfg.num_heads, dropout=cfg.dropout,
                num_feature_levels=cfg.num_feature_levels,
                backbone_config=resnet_config(cfg.backbone, cfg.num_feature_levels, max_levels=4))


FAMILY_SPECS = (FamilySpec(name="adamixer", adapter=AdaMixerAdapter, config_class=AdaMixerConfig,
                           model_class=AdaMixerForObjectDetection, config_kwargs=adamixer_config_kwargs,
                           capabilities=frozenset({"query_table", "multi_scale", "pixel_mask"}),
                           auto_classes=register_auto_classes),)
