"""DEIMv2 adapter (``Deimv2ForObjectDetection``): D-FINE's decoder and heads (:mod:`.d_fine`), another front end.

What differs from D-FINE, as exposed by :class:`Deimv2Adapter`:

* the backbone and its per-level projections are one module, ``model.model.conv_encoder`` (the transformers
  backbone in ``conv_encoder.model``, the projections in ``conv_encoder.encoder_input_proj``); ``encoder_inputs``
  are those projections' outputs, ``encoder_outputs`` the hybrid encoder's maps (``encoder_last_hidden_state``);
* the model never computes a pixel mask (not even in its backbone); ``feature_masks`` are the pixel mask
  downsampled to each level (nearest), what D-FINE's backbone returns;
* supported front end: the hybrid encoder over a transformers convolutional backbone (ResNet by default, or
  HGNetV2 through ``model.hf_overrides.backbone_config``). ``encoder_type="lite"`` (the Atto / Femto / Pico
  variants: two levels fused without an encoder) and DINOv3 backbones (a spatial-tuning adapter in place of the
  projections) are refused when the adapter is built;
* its own training recipe (``loss.recipe: family``): matchability-aware classification (MAL) and dense one-to-one
  matching (``Deimv2Loss``), plus D-FINE's FGL / DDF; the decoder layers use RMSNorm, SwiGLU and a gateway.
"""
from __future__ import annotations

from torch import Tensor, nn

from ...errors import ConfigError, ModelError
from ..families import FamilySpec
from ..outputs import DetectorOutput
from .d_fine import DFineAdapter
from .rt_detr import rt_detr_config_kwargs

__all__ = ["FAMILY_SPECS", "Deimv2Adapter"]


class Deimv2Adapter(DFineAdapter):
    """:class:`DetectorAdapter` of DEIMv2; everything past the hybrid encoder is D-FINE's (:class:`DFineAdapter`)."""

    family = "deimv2"
    model_types = ("deimv2",)
    family_loss_class = "Deimv2Loss"

    def _check_model(self) -> None:
        cfg = self.model.config
        if getattr(cfg, "encoder_type", "hybrid") != "hybrid":
            raise ModelError(f"deimv2: encoder_type={cfg.encoder_type!r} is not supported (the lite encoder fuses two "
                             "levels without encoder inputs of one width); use the hybrid encoder")
        if getattr(self.model.model.conv_encoder, "encoder_input_proj", None) is None:
            raise ModelError(f"deimv2: a {getattr(cfg.backbone_config, 'model_type', '?')} backbone is not supported "
                             "(no per-level input projections); use a convolutional backbone (ResNet, HGNetV2)")
        super()._check_model()

    @property
    def backbone(self) -> nn.Module:
        return self.model.model.conv_encoder.model

    def _input_projections(self) -> list[nn.Module]:
        return list(self.model.model.conv_encoder.encoder_input_proj)

    def _forward_family_loss(self, pixel_values: Tensor, pixel_mask: Tensor, targets: list[dict]) -> DetectorOutput:
        cfg = self.model.config
        if not cfg.auxiliary_loss and cfg.num_denoising > 0:
            # Deimv2ForObjectDetectionLoss splits the denoising queries off only when auxiliary_loss is set
            raise ConfigError("loss.aux_loss=false: transformers' DEIMv2 loss then matches the denoising queries as "
                              "ordinary ones; keep loss.aux_loss=true, or set loss.recipe=set")
        return super()._forward_family_loss(pixel_values, pixel_mask, targets)


FAMILY_SPECS = (
    FamilySpec(name="deimv2", adapter=Deimv2Adapter, image_processor="RTDetrImageProcessor",
               config_class="Deimv2Config", model_class="Deimv2ForObjectDetection",
               config_kwargs=rt_detr_config_kwargs, capabilities=frozenset({"multi_scale", "square_padding"})),
)
