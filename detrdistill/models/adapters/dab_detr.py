"""DAB-DETR adapter (``DabDetrForObjectDetection``; transformers spells its ``model_type`` ``dab-detr``).

Layout of one DAB-DETR forward, as exposed by :class:`DabDetrAdapter`:

* one feature level: the backbone's last stage (C5) after ``model.model.input_projection`` is the encoder input,
  the encoder memory ``[B, H*W, d]`` reshaped to ``[B, d, H, W]`` is the encoder output;
* the queries are the learned 4-d anchors ``model.model.query_refpoint_embeddings`` (stored as logits); the
  adapter hands them out in **sigmoid space** (``QueryGroup.reference`` ``[1, N, 4]``, cxcywh in [0, 1]) like
  every other family, and turns a group's reference back into logits before calling the decoder. The decoder
  content starts from zeros (no ``num_patterns``), so a group needs only ``reference``; an optional ``content``
  ``[B or 1, N, d]`` replaces the zeros;
* per-stage predictions: ``class_embed(h_l)`` and ``sigmoid(bbox_predictor(h_l) + inverse_sigmoid(ref_l))`` where
  ``h_l`` is the decoder's (layer-normed) intermediate state of layer ``l`` and ``ref_l`` the anchor that layer
  started from, which is exactly what ``DabDetrForObjectDetection.forward`` does for its last layer and its
  auxiliary outputs (the box maths lives there, not in the decoder, so it is repeated here, out of place).

Depends on the private decoder keyword names of transformers' ``DabDetrDecoder`` (``inputs_embeds``,
``query_position_embeddings``, ``object_queries``, ``encoder_hidden_states``, ``memory_key_padding_mask``).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from ...errors import ModelError
from .base import (DetectorAdapter, ModuleInputCapture, ModuleOutputCapture, expand_group, inverse_sigmoid,
                   split_levels, reference_logits)
from ..families import FamilySpec
from ..hf_config import common_kwargs, resnet_config

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "DabDetrAdapter"]


class DabDetrAdapter(DetectorAdapter):
    """:class:`DetectorAdapter` of DAB-DETR (sigmoid / focal-style classification, C logits).

    ``encoder_inputs``: ``[B, d, H/32, W/32]`` C5 after ``input_projection``; ``encoder_outputs``: the encoder
    memory on the same grid; ``feature_masks``: the decoder's memory padding mask on that grid (True = real).
    ``state["decoder_kwargs"]`` holds the captured decoder kwargs (memory, its sine position embedding, mask).
    """

    family = "dab_detr"
    model_types = ("dab-detr",)  # transformers' DabDetrConfig.model_type (hyphen, unlike our family name)
    class_activation = "sigmoid"
    normalized_encoder_inputs = False  # input_projection is a plain 1x1 conv
    decoder_kwargs = ("inputs_embeds", "query_position_embeddings", "object_queries", "encoder_hidden_states",
                      "memory_key_padding_mask", "return_dict")

    def _check_model(self) -> None:
        cfg = self.model.config
        if not hasattr(self.model, "class_embed") or not hasattr(self.model, "bbox_predictor"):
            raise ModelError("DabDetrAdapter needs a DabDetrForObjectDetection (class_embed / bbox_predictor heads)")
        if int(getattr(cfg, "num_patterns", 0) or 0) > 0:
            raise ModelError(f"DabDetrAdapter does not support num_patterns > 0 (got {cfg.num_patterns})")
        if int(cfg.query_dim) != 4:
            raise ModelError(f"DabDetrAdapter needs 4-d anchors (query_dim=4), got query_dim={cfg.query_dim}")

    # ------------------------------------------------------------------ properties
    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def query_form(self) -> dict[str, int]:
        return {"reference": 4}

    # ------------------------------------------------------------------ forward
    def _heads(self, hidden: Tensor, reference: Tensor) -> tuple[Tensor, Tensor]:
        """Per-stage logits / boxes from decoder states ``[L, B, N, d]`` and stage anchors ``[L, B, N, 4]``."""
        logits = self.model.class_embed(hidden)
        boxes = (self.model.bbox_predictor(hidden) + inverse_sigmoid(reference)).sigmoid()
        return logits, boxes

    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        inner = self.model.model
        with ModuleInputCapture(inner.decoder) as dec_cap, \
                ModuleOutputCapture([inner.input_projection]) as proj_cap:
            # the base model (not ForObjectDetection): it returns the per-layer states and anchors, with no loss
            model_out = inner(pixel_values, pixel_mask=pixel_mask, return_dict=True)
        kwargs = dec_cap.require("decoder")
        projected = proj_cap.first()[0]  # [B, d, H, W]
        batch, _, height, width = projected.shape

        hidden = model_out.intermediate_hidden_states  # [L, B, N, d], layer-normed
        reference = model_out.reference_points        # [L, B, N, 4], anchor each layer started from
        logits, boxes = self._heads(hidden, reference)

        memory = kwargs["encoder_hidden_states"]  # [B, H*W, d]
        mask = kwargs["memory_key_padding_mask"].reshape(batch, height, width).bool()
        return DetectorOutput(
            logits=logits,
            boxes=boxes,
            embeddings=hidden,
            encoder_inputs=[projected],
            encoder_outputs=split_levels(memory, [(height, width)]),
            feature_masks=[mask],
            queries=self.query_table(),
            state={"decoder_kwargs": kwargs},
        )

    # ------------------------------------------------------------------ extra query groups
    def query_table(self) -> QueryGroup:
        anchors = self.model.model.query_refpoint_embeddings.weight  # [N, 4] logits
        return QueryGroup(reference=anchors.sigmoid().unsqueeze(0))

    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        self._check_group(group, ("reference",))
        kwargs = out.state["decoder_kwargs"]
        memory = kwargs["encoder_hidden_states"]
        batch = memory.shape[0]
        g = expand_group(group, batch, memory.device, memory.dtype)
        if g.content is None:
            content = memory.new_zeros(batch, g.reference.shape[1], self.d_model)
        elif g.content.shape[-1] != self.d_model:
            raise ValueError(f"dab_detr: group.content has width {g.content.shape[-1]}, the model expects "
                             f"{self.d_model}")
        else:
            content = g.content
        dec = self.model.model.decoder(
            inputs_embeds=content,
            query_position_embeddings=reference_logits(g.reference),
            object_queries=kwargs["object_queries"],
            encoder_hidden_states=memory,
            memory_key_padding_mask=kwargs["memory_key_padding_mask"],
            return_dict=True,
        )
        hidden = dec.intermediate_hidden_states
        logits, boxes = self._heads(hidden, dec.reference_points)
        return GroupOutput(logits=logits, boxes=boxes, embeddings=hidden)


def dab_config_kwargs(cfg: "ModelConfig") -> dict:
    return dict(common_kwargs(cfg), hidden_size=cfg.d_model, backbone_config=resnet_config(cfg.backbone, 1))


FAMILY_SPECS = (FamilySpec(name="dab_detr", adapter=DabDetrAdapter, image_processor="ConditionalDetrImageProcessor", model_types=("dab-detr",),
                           config_class="DabDetrConfig", model_class="DabDetrForObjectDetection",
                           config_kwargs=dab_config_kwargs, capabilities=frozenset({"query_table", "pixel_mask"})),)
