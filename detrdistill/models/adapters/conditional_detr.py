"""Adapter for ``ConditionalDetrForObjectDetection`` (sigmoid / focal classes; one feature level, stride 32).

Same decoder mechanics as DETR (see :mod:`.detr`: per-stage states = ``layernorm(raw layer output)``, last stage =
``last_hidden_state``), plus the box decoding transformers only does inside ``ForObjectDetection.forward``:
the decoder derives 2-d reference points from the position queries (``decoder.ref_point_head(pos).sigmoid()``,
returned query-first as ``(N, B, 2)``), and every stage's box is
``sigmoid(bbox_predictor(h) + [inverse_sigmoid(ref), 0, 0])`` (written out of place here; transformers adds in place).
"""
from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ModelError
from .base import inverse_sigmoid
from .detr import DetrAdapter, detr_config_kwargs
from ..families import FamilySpec

__all__ = ["FAMILY_SPECS", "ConditionalDetrAdapter"]


class ConditionalDetrAdapter(DetrAdapter):
    family = "conditional_detr"
    class_activation = "sigmoid"

    def _check_model(self) -> None:
        if float(getattr(self.model.config, "decoder_layerdrop", 0.0) or 0.0) > 0:
            raise ModelError("conditional_detr: decoder_layerdrop > 0 is not supported (stages would be skipped)")

    def _boxes(self, hs: Tensor, decoder_output) -> Tensor:
        ref = decoder_output.reference_points  # (N, B, 2) in [0, 1]
        ref_logit = inverse_sigmoid(ref).transpose(0, 1)  # (B, N, 2)
        tmp = self.model.bbox_predictor(hs)  # (L, B, N, 4)
        return torch.cat([tmp[..., :2] + ref_logit, tmp[..., 2:]], dim=-1).sigmoid()


FAMILY_SPECS = (FamilySpec(name="conditional_detr", adapter=ConditionalDetrAdapter,
                           image_processor="ConditionalDetrImageProcessor",
                           config_class="ConditionalDetrConfig", model_class="ConditionalDetrForObjectDetection",
                           config_kwargs=detr_config_kwargs, load_kwargs={"auxiliary_loss": False},
                           capabilities=frozenset({"query_table", "pixel_mask"})),)
