"""``AdaMixerConfig``: the transformers config of our AdaMixer (Gao et al., CVPR 2022, "AdaMixer: A Fast-Converging
Query-Based Object Detector").

Field names follow transformers' DETR configs where the meaning matches (``num_queries``, ``d_model``,
``decoder_layers``, ``decoder_ffn_dim``, ``decoder_attention_heads``, ``num_feature_levels``, ``auxiliary_loss``),
so the project's ``ModelConfig`` maps onto it like onto the other families. AdaMixer-only fields: ``in_points``
(P_in, sampling points per group), ``out_points`` (P_out, spatial-mixing output patterns), ``n_groups`` (G, mixer
groups), ``level_tau`` (temperature of the Gaussian-like weights over the feature levels) and
``learn_initial_boxes`` (AdaMixer keeps its initial whole-image boxes fixed: False).

The backbone is transformers' own ``ResNetConfig`` (random init, built with ``load_backbone``); the neck maps the
last ``min(num_feature_levels, len(stages))`` ResNet stages to ``d_model`` channels with 1x1 convs and adds
stride-2 3x3 convs for any further level.
"""
from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from ...errors import DetrDistillError

__all__ = ["AdaMixerConfig", "AdaMixerConfigError"]


class AdaMixerConfigError(DetrDistillError, ValueError):
    """An AdaMixer configuration the operators cannot run (one line naming the fields)."""


class AdaMixerConfig(PreTrainedConfig):
    r"""Configuration of :class:`~detrdistill.models.adamixer.AdaMixerForObjectDetection`.

    Losses (focal alpha/gamma, class 2, L1 5, GIoU 2; Hungarian costs 2/5/2) match the project's ``LossConfig``
    defaults and the official AdaMixer configs; they are used only when ``labels`` are passed to the model.
    """

    model_type = "adamixer"
    sub_configs_defaults = {
        "backbone_config": SubConfigSpec(config_class=AutoConfig, model_type="resnet",
                                         init_kwargs={"out_features": ["stage1", "stage2", "stage3", "stage4"]}),
    }
    attribute_map = {"hidden_size": "d_model", "num_attention_heads": "decoder_attention_heads"}

    backbone_config: dict | PreTrainedConfig | None = None
    num_queries: int = 100
    d_model: int = 256
    decoder_layers: int = 6
    decoder_ffn_dim: int = 2048
    decoder_attention_heads: int = 8
    num_feature_levels: int = 4
    in_points: int = 32
    out_points: int = 128
    n_groups: int = 4
    level_tau: float = 2.0
    learn_initial_boxes: bool = False
    dropout: float | int = 0.0
    auxiliary_loss: bool = True
    init_xavier_gain: float = 1.0
    prior_prob: float = 0.01
    class_cost: float = 2.0
    bbox_cost: float = 5.0
    giou_cost: float = 2.0
    class_loss_coefficient: float = 2.0
    bbox_loss_coefficient: float = 5.0
    giou_loss_coefficient: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    is_encoder_decoder: bool = False

    def __post_init__(self, **kwargs):
        # backbone switches other DETR configs consume (the builder passes them to every family): the backbone here
        # is always transformers' own, randomly initialised, so they are dropped rather than saved
        for key in ("use_pretrained_backbone", "use_timm_backbone"):
            kwargs.pop(key, None)
        super().__post_init__(**kwargs)

    def validate_architecture(self):
        """The shapes the operators need (the model calls it; raises :class:`AdaMixerConfigError`)."""
        for key in ("num_queries", "decoder_layers", "num_feature_levels", "in_points", "out_points", "n_groups",
                    "decoder_attention_heads"):
            if getattr(self, key) < 1:
                raise AdaMixerConfigError(f"adamixer: {key} must be >= 1, got {getattr(self, key)}")
        d = self.d_model
        if d % self.n_groups:
            raise AdaMixerConfigError(f"adamixer: d_model ({d}) must be a multiple of n_groups ({self.n_groups})")
        if d % 8:
            raise AdaMixerConfigError(f"adamixer: d_model ({d}) must be a multiple of 8 (box position encoding)")
        if d % self.decoder_attention_heads:
            raise AdaMixerConfigError(f"adamixer: d_model ({d}) must be divisible by decoder_attention_heads "
                                      f"({self.decoder_attention_heads})")
