"""RF-DETR adapter (``RfDetrForObjectDetection``): a DINOv2-style ViT, a single-scale projector, LW-DETR's decoder.

Everything the adapter exposes (levels, queries, the Group-DETR query groups, ``decode_group``) is shared with
LW-DETR and documented in :mod:`.lw_detr_base`. What is RF-DETR's own:

* **One feature level.** transformers' RF-DETR projector concatenates the ViT outputs and makes one map at stride
  ``patch_size`` (16 here: P4); ``config.num_feature_levels`` must stay 1 (``model.num_feature_levels`` may only
  be set to 1).
* **Backbone** (``RfDetrDinov2Config``, see :func:`.lw_detr_base.vit_backbone_kwargs`): width ``d_model``, depth
  ``encoder_layers``, ``num_heads`` heads, MLP ratio ``ffn_dim // d_model``; patch 16 (RF-DETR nano / small /
  medium; the DINOv2 default is 14); **no windows** (``num_windows=1``). Override with ``model.hf_overrides:
  {backbone_config: {...}}`` (merged into these).
* **Sizes** (``FamilySpec.input_sides``): sides multiples of ``patch_size * num_windows``; with windows
  (``num_windows > 1``, every released checkpoint) the batch must also be **square**: transformers' window
  partition reshapes the token grid as ``(windows, W/windows, windows, H/windows)`` (a bug kept from the original,
  see its comment), which is only spatially correct when ``H == W`` -- a rectangular batch does not fail, its
  feature maps come out scrambled. Hence ``num_windows=1`` from scratch: any multiple of 16 is exact, and the data
  pipeline's rectangular multiple-of-32 batches fit. That is also why a default ``RfDetrConfig`` (patch 14,
  4 x 4 windows) takes 448 (= 8 x 56) but not 320 or 384. At least ``num_queries`` tokens (``H/16 * W/16``).
* **ONNX** (``FamilySpec.onnx_static_size``): the graph is traced at the image processor's square pad with static
  height / width; the backbone's position embeddings for that size (``interpolate_pos_encoding``, antialiased
  bicubic, which the TorchScript exporter refuses) are computed in PyTorch at export time and enter the graph as a
  constant (:func:`detrdistill.export.onnx_export.constant_position_embeddings`).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ...errors import ModelError
from ..families import FamilySpec, InputSides
from .lw_detr_base import LwDetrBaseAdapter, decoder_config_kwargs, feature_levels, patch_side, vit_backbone_kwargs

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "RfDetrAdapter"]


class RfDetrAdapter(LwDetrBaseAdapter):
    family = "rf_detr"

    def _check_model(self) -> None:
        super()._check_model()
        if int(self.model.config.num_feature_levels) != 1:
            raise ModelError(f"rf_detr: transformers' RF-DETR projector makes one feature level, the config says "
                             f"num_feature_levels={self.model.config.num_feature_levels}")

    def level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        p = patch_side(self.model.config.backbone_config.patch_size)
        return [(height // p, width // p)]


def rf_detr_config_kwargs(cfg: "ModelConfig") -> dict:
    backbone = dict(vit_backbone_kwargs(cfg), model_type="rf_detr_dinov2", patch_size=16, num_windows=1)
    return dict(decoder_config_kwargs(cfg), num_feature_levels=feature_levels(cfg, (1,)), backbone_config=backbone)


def rf_detr_input_sides(config) -> InputSides:
    bb = config.backbone_config
    windows = int(bb.num_windows)
    return InputSides(multiple=patch_side(bb.patch_size) * windows, square=windows > 1)


FAMILY_SPECS = (FamilySpec(name="rf_detr", adapter=RfDetrAdapter, config_class="RfDetrConfig",
                           model_class="RfDetrForObjectDetection", config_kwargs=rf_detr_config_kwargs,
                           input_sides=rf_detr_input_sides, capabilities=frozenset({"pixel_mask", "square_padding"}),
                           onnx_static_size="its DINOv2 backbone resizes the position embeddings with antialiased "
                           "bicubic interpolation, which the TorchScript ONNX exporter cannot export (opsets 17-20): "
                           "they are computed in PyTorch for the one traced size"),)
