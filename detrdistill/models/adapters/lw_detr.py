"""LW-DETR adapter (``LwDetrForObjectDetection``): a windowed ViT, a multi-scale projector, a deformable decoder.

Everything the adapter exposes (levels, queries, the Group-DETR query groups, ``decode_group``) is shared with
RF-DETR and documented in :mod:`.lw_detr_base`. What is LW-DETR's own:

* **Feature levels.** The projector resamples the ViT's outputs (all at stride ``patch_size``) to one map per
  ``projector_scale_factors`` entry: 2.0 -> stride 8, 1.0 -> stride 16, 0.5 -> stride 32 (patch 16). ``model.
  num_feature_levels`` picks them: 1 = ``[1.0]`` (LW-DETR tiny / small / medium, the default when the key is not
  set), 2 = ``[2.0, 0.5]`` (large / xlarge), 3 = ``[2.0, 1.0, 0.5]``. transformers' default (``[]``, no level at
  all) is what makes a default ``LwDetrConfig`` fail with ``torch.cat(): expected a non-empty list``.
* **Backbone** (``LwDetrViTConfig``, see :func:`.lw_detr_base.vit_backbone_kwargs`): width ``d_model``, depth
  ``encoder_layers``, ``num_heads`` heads, MLP ratio ``ffn_dim // d_model``; patch 16; 2 x 2 windows
  (``num_windows=4``), global attention in the layers whose outputs feed the projector, windowed attention in the
  others. Any key can be changed with ``model.hf_overrides: {backbone_config: {...}}`` (merged into these).
* **Sizes** (``FamilySpec.input_sides``): both padded sides multiples of ``patch_size * sqrt(num_windows)`` = 32
  here (transformers' checkpoints: 16 x 4 = 64), any aspect ratio (the window partition is spatially exact), so the
  data pipeline's multiple-of-32 batches fit; at least ``num_queries`` tokens over the levels.
* The projector's C2f blocks use BatchNorm (train-mode batch statistics): train and eval outputs of the same model
  differ through it, not through the query groups.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..families import FamilySpec, InputSides
from .lw_detr_base import LwDetrBaseAdapter, decoder_config_kwargs, feature_levels, patch_side, vit_backbone_kwargs

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "LwDetrAdapter"]

#: projector scale factors per number of feature levels (finest first)
SCALES = {1: [1.0], 2: [2.0, 0.5], 3: [2.0, 1.0, 0.5]}


class LwDetrAdapter(LwDetrBaseAdapter):
    family = "lw_detr"

    def level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        p = patch_side(self.model.config.backbone_config.patch_size)
        h, w = height // p, width // p
        sizes = {2.0: (2 * h, 2 * w), 1.0: (h, w), 0.5: ((h + 1) // 2, (w + 1) // 2)}  # stride-2 conv: ceil
        return [sizes[float(s)] for s in self.model.config.projector_scale_factors]


def lw_detr_config_kwargs(cfg: "ModelConfig") -> dict:
    backbone = dict(vit_backbone_kwargs(cfg), model_type="lw_detr_vit", patch_size=16, num_windows=4)
    taken = set(backbone["out_indices"])
    backbone["window_block_indices"] = [i for i in range(cfg.encoder_layers) if i + 1 not in taken]
    levels = feature_levels(cfg, tuple(SCALES))
    return dict(decoder_config_kwargs(cfg), projector_scale_factors=SCALES[levels], backbone_config=backbone)


def lw_detr_input_sides(config) -> InputSides:
    bb = config.backbone_config
    return InputSides(multiple=patch_side(bb.patch_size) * int(bb.num_windows_side))


FAMILY_SPECS = (FamilySpec(name="lw_detr", adapter=LwDetrAdapter, config_class="LwDetrConfig",
                           model_class="LwDetrForObjectDetection", config_kwargs=lw_detr_config_kwargs,
                           input_sides=lw_detr_input_sides,
                           capabilities=frozenset({"multi_scale", "pixel_mask", "square_padding"})),)
