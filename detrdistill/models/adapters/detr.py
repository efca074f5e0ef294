"""Adapter for ``DetrForObjectDetection`` (softmax classes, C + 1 logits; one feature level, stride 32).

What transformers does not expose, written here once:

* per-stage states without labels: forward hooks on the decoder layers record each layer's raw output; stage
  ``l < L`` is ``decoder.layernorm(raw_l)`` (what original DETR's intermediate list holds) and stage L is the
  decoder's ``last_hidden_state``. This matches transformers' own forward for ``auxiliary_loss`` False *and*
  True (with True, transformers feeds the normed state to the next layer and norms the last one twice; the
  intermediate outputs are still ``layernorm(raw_l)``). Our models are built with ``auxiliary_loss=False``.
* encoder inputs = ``input_projection`` output; encoder outputs / masks = the decoder's memory kwargs reshaped.
* extra groups: the decoder called again with the captured memory kwargs and other position queries (content
  starts at zeros unless the group provides one).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from .base import (DetectorAdapter, ModuleInputCapture, ModuleOutputCapture, expand_group, split_levels,
                   split_mask)
from ..families import FamilySpec
from ..hf_config import common_kwargs, resnet_config

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "DetrAdapter"]

_MEMORY_KEYS = ("encoder_hidden_states", "encoder_attention_mask", "spatial_position_embeddings")


class DetrAdapter(DetectorAdapter):
    family = "detr"
    class_activation = "softmax"
    normalized_encoder_inputs = False  # input_projection is a plain 1x1 conv (also Conditional DETR's)
    decoder_kwargs = ("inputs_embeds", "attention_mask", "object_queries_position_embeddings", *_MEMORY_KEYS)

    @property
    def query_form(self) -> dict[str, int]:
        return {"position": self.d_model}

    def query_table(self) -> QueryGroup:
        return QueryGroup(position=self.model.model.query_position_embeddings.weight.unsqueeze(0))

    # ------------------------------------------------------------------ family pieces (Conditional overrides)
    def _boxes(self, hs: Tensor, decoder_output) -> Tensor:
        """Per-stage boxes [L, B, N, 4] from normed states [L, B, N, d]."""
        return self.model.bbox_predictor(hs).sigmoid()

    def _stage_states(self, raw: list[Tensor], decoder_output) -> Tensor:
        """[L, B, N, d]: layernorm(raw_l) for l < L, the decoder's last_hidden_state for stage L."""
        n = self.num_stages
        if len(raw) != n:
            raise RuntimeError(f"{self.family}: expected {n} decoder layer outputs, got {len(raw)} "
                               "(decoder layerdrop is not supported)")
        norm = self.model.model.decoder.layernorm
        return torch.stack([norm(h) for h in raw[:-1]] + [decoder_output.last_hidden_state])

    def _decoded(self, hs: Tensor, decoder_output) -> GroupOutput:
        return GroupOutput(logits=self.model.class_labels_classifier(hs), boxes=self._boxes(hs, decoder_output),
                           embeddings=hs)

    # ------------------------------------------------------------------ forward
    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        inner = self.model.model
        dec = inner.decoder
        with ModuleInputCapture(dec) as cap, ModuleOutputCapture([dec]) as dec_out, \
                ModuleOutputCapture(dec.layers) as layers, ModuleOutputCapture([inner.input_projection]) as proj:
            self.model(pixel_values=pixel_values, pixel_mask=pixel_mask)
        kw = cap.require()
        (decoder_output,) = dec_out.first()
        hs = self._stage_states([o[0] for o in layers.outputs if o], decoder_output)
        pred = self._decoded(hs, decoder_output)
        (src,) = proj.first()
        shape = [tuple(src.shape[-2:])]
        memory = kw["encoder_hidden_states"]
        mask = kw["encoder_attention_mask"]
        return DetectorOutput(
            logits=pred.logits, boxes=pred.boxes, embeddings=pred.embeddings,
            encoder_inputs=[src],
            encoder_outputs=split_levels(memory, shape),
            feature_masks=split_mask(mask, shape),
            queries=self.query_table(),
            state={"decoder_kwargs": {k: kw[k] for k in _MEMORY_KEYS}, "spatial_shapes": shape},
        )

    # ------------------------------------------------------------------ extra group
    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        mem = out.state["decoder_kwargs"]
        memory = mem["encoder_hidden_states"]
        g = expand_group(group, memory.shape[0], memory.device, memory.dtype)
        self._check_group(g, ["position"])
        content = g.content if g.content is not None else torch.zeros_like(g.position)
        dec = self.model.model.decoder
        with ModuleOutputCapture(dec.layers) as layers:
            decoder_output = dec(inputs_embeds=content, attention_mask=None,
                                 object_queries_position_embeddings=g.position, **mem)
        hs = self._stage_states([o[0] for o in layers.outputs if o], decoder_output)
        return self._decoded(hs, decoder_output)


def detr_config_kwargs(cfg: "ModelConfig") -> dict:
    """DETR / Conditional DETR: one feature level (C5). ``auxiliary_loss`` stays False (see FAMILY_SPECS)."""
    return dict(common_kwargs(cfg), d_model=cfg.d_model, backbone_config=resnet_config(cfg.backbone, 1))


# auxiliary_loss=True makes transformers feed the layer-normed state to the next decoder layer, which changes
# the forward; our criterion computes the auxiliary losses from the per-stage outputs, so it is always off
FAMILY_SPECS = (FamilySpec(name="detr", adapter=DetrAdapter, image_processor="DetrImageProcessor", config_class="DetrConfig",
                           model_class="DetrForObjectDetection", config_kwargs=detr_config_kwargs,
                           load_kwargs={"auxiliary_loss": False}, capabilities=frozenset({"query_table", "pixel_mask"})),)
