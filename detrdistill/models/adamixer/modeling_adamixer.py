"""``AdaMixerForObjectDetection``: AdaMixer (Gao et al., CVPR 2022) as a transformers ``PreTrainedModel``.

No encoder: ResNet + neck give the multi-scale features; a learned query table (content embeddings, layer-normed
at the decoder entry, and initial boxes, the whole image by default) is refined by ``decoder_layers`` stages
(:class:`~.decoder_stage.AdaMixerDecoderStage`), each with its own heads. Boxes flow between stages as AdaMixer's
``xyzr`` in pixels (detached between stages, as AdaMixer trains); every stage's boxes are reported as normalised
cxcywh relative to the un-padded image, clamped to [0, 1] with a straight-through gradient.

``forward(pixel_values, pixel_mask=None, labels=None)`` -> :class:`AdaMixerObjectDetectionOutput`; with ``labels``
(transformers' format: dicts with ``class_labels`` and normalised cxcywh ``boxes``) the project's set criterion
(focal + L1 + GIoU, Hungarian matching, every stage when ``auxiliary_loss``) fills ``loss`` / ``loss_dict``.
``decode_queries(...)`` decodes another query group over already computed features (the query-prior term).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from .backbone import AdaMixerBackbone, AdaMixerNeck, FrozenBatchNorm2d
from .box_coding import cxcywh_to_xyzr, image_sizes_from_mask
from .configuration_adamixer import AdaMixerConfig
from .decoder_stage import AdaMixerDecoderStage

__all__ = ["AdaMixerPreTrainedModel", "AdaMixerModel", "AdaMixerForObjectDetection", "AdaMixerDecoderOutput",
           "AdaMixerObjectDetectionOutput"]


@dataclass
class AdaMixerDecoderOutput(ModelOutput):
    """Per-stage predictions of one query group: logits [B, L, N, C], boxes [B, L, N, 4] (normalised cxcywh in
    [0, 1]), hidden states [B, L, N, D] (the stage's output content)."""
    intermediate_logits: Tensor | None = None
    intermediate_boxes: Tensor | None = None
    intermediate_hidden_states: Tensor | None = None


@dataclass
class AdaMixerObjectDetectionOutput(ModelOutput):
    """logits [B, N, C] (sigmoid, no no-object class) and pred_boxes [B, N, 4] of the last stage; per-stage
    ``intermediate_*`` [B, L, N, ...]; ``feature_maps`` M x [B, D, H_m, W_m] (neck outputs), ``feature_masks``
    M x [B, H_m, W_m] bool (True = real pixel); ``image_sizes`` [B, 2] un-padded (width, height) in pixels."""
    loss: Tensor | None = None
    loss_dict: dict | None = None
    logits: Tensor | None = None
    pred_boxes: Tensor | None = None
    auxiliary_outputs: list | None = None
    intermediate_logits: Tensor | None = None
    intermediate_boxes: Tensor | None = None
    intermediate_hidden_states: Tensor | None = None
    feature_maps: tuple | None = None
    feature_masks: tuple | None = None
    image_sizes: Tensor | None = None


def _clamp_straight_through(boxes: Tensor) -> Tensor:
    """Values clamped to [0, 1], gradient of the identity (a box that leaves the image can still be pulled back)."""
    return boxes + (boxes.clamp(0.0, 1.0) - boxes).detach()


class AdaMixerPreTrainedModel(PreTrainedModel):
    config_class = AdaMixerConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """Linear layers as AdaMixer: PyTorch's default bias, Xavier-uniform weight; unit norms; then each AdaMixer
        module's own init. (The bias matters: the mixing generator's weight starts at zero, so its bias alone
        mixes the sampled features at first; a zero bias would make every image look the same.)"""
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight, gain=self.config.init_xavier_gain)
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features)
                nn.init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.MultiheadAttention):
            module._reset_parameters()
        elif isinstance(module, FrozenBatchNorm2d):
            for buf, value in ((module.weight, 1.0), (module.bias, 0.0), (module.running_mean, 0.0),
                               (module.running_var, 1.0)):
                buf.fill_(value)
        # transformers calls this once per module, children first, and skips modules without direct parameters:
        # every module with an AdaMixer-specific init owns a parameter (or is reset by its owner)
        if hasattr(module, "reset_adamixer_parameters"):
            module.reset_adamixer_parameters()


class QueryTable(nn.Module):
    """The learned queries: ``content`` [N, D] (layer-normed at the decoder entry) and initial ``boxes`` [N, 4]
    (normalised cxcywh; AdaMixer: the whole image, fixed unless ``learn_initial_boxes``)."""

    def __init__(self, num_queries: int, d_model: int, learn_boxes: bool):
        super().__init__()
        self.content = nn.Parameter(torch.empty(num_queries, d_model))
        self.boxes = nn.Parameter(torch.empty(num_queries, 4))
        self.learn_boxes = learn_boxes
        self.reset_adamixer_parameters()

    @torch.no_grad()
    def reset_adamixer_parameters(self) -> None:
        nn.init.normal_(self.content)
        nn.init.constant_(self.boxes, 1.0)
        nn.init.constant_(self.boxes[:, :2], 0.5)

    def forward(self) -> tuple[Tensor, Tensor]:
        """content [1, N, D], boxes [1, N, 4] (detached unless learnable)."""
        boxes = self.boxes if self.learn_boxes else self.boxes.detach()
        return self.content[None], boxes[None]


class AdaMixerModel(nn.Module):
    """Backbone, neck, query table and decoder stages (the heads live in the stages)."""

    def __init__(self, config: AdaMixerConfig):
        super().__init__()
        self.backbone = AdaMixerBackbone(config)
        self.neck = AdaMixerNeck(self.backbone.channels, config.d_model, config.num_feature_levels)
        strides = self.backbone.strides[self.neck.skip:]
        while len(strides) < config.num_feature_levels:
            strides.append(strides[-1] * 2)
        self.strides = strides
        self.d_model = int(config.d_model)
        self.query_table = QueryTable(config.num_queries, config.d_model, bool(config.learn_initial_boxes))
        self.decoder = nn.ModuleList(AdaMixerDecoderStage(config) for _ in range(config.decoder_layers))

    def initial_queries(self) -> tuple[Tensor, Tensor]:
        """The learned table: content [1, N, D] (before the entry LayerNorm) and boxes [1, N, 4] normalised cxcywh."""
        return self.query_table()

    def features(self, pixel_values: Tensor, pixel_mask: Tensor) -> tuple[list[Tensor], list[Tensor]]:
        """Neck outputs M x [B, D, H_m, W_m] and their masks M x [B, H_m, W_m] (nearest-downsampled pixel mask)."""
        maps = self.neck(self.backbone(pixel_values))
        masks = [F.interpolate(pixel_mask[None].float(), size=m.shape[-2:])[0].bool() for m in maps]
        return maps, masks

    def decode(self, features: Sequence[Tensor], content: Tensor, boxes: Tensor,
               image_wh: Tensor) -> AdaMixerDecoderOutput:
        """Run every stage: content [B, N, D] (LayerNorm applied here), boxes [B, N, 4] normalised cxcywh."""
        content = F.layer_norm(content, (self.d_model,))  # a constant shape: traceable for ONNX export
        xyzr = cxcywh_to_xyzr(boxes, image_wh)
        logits, out_boxes, hidden = [], [], []
        for stage in self.decoder:
            out = stage(features, self.strides, content, xyzr, image_wh)
            content, xyzr = out.content, out.xyzr.detach()
            logits.append(out.logits)
            out_boxes.append(_clamp_straight_through(out.boxes))
            hidden.append(out.content)
        return AdaMixerDecoderOutput(intermediate_logits=torch.stack(logits, 1),
                                     intermediate_boxes=torch.stack(out_boxes, 1),
                                     intermediate_hidden_states=torch.stack(hidden, 1))


class AdaMixerForObjectDetection(AdaMixerPreTrainedModel):
    """AdaMixer detector; ``self.model`` is the :class:`AdaMixerModel` (``model.backbone`` holds the ResNet)."""

    def __init__(self, config: AdaMixerConfig):
        super().__init__(config)
        config.validate_architecture()
        self.model = AdaMixerModel(config)
        self.post_init()

    def criterion(self):
        """The project's set criterion (focal + L1 + GIoU, Hungarian) with this config's weights (not a submodule)."""
        from ...ops.criterion import SetCriterion

        c = self.config
        return SetCriterion(
            c.num_labels, class_cost=c.class_cost, bbox_cost=c.bbox_cost, giou_cost=c.giou_cost,
            class_weight=c.class_loss_coefficient, bbox_weight=c.bbox_loss_coefficient,
            giou_weight=c.giou_loss_coefficient, focal_alpha=c.focal_alpha, focal_gamma=c.focal_gamma,
            class_loss="focal", aux_loss=bool(c.auxiliary_loss))

    def image_sizes(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """(pixel_mask [B, H, W], un-padded (width, height) [B, 2]); an all-ones mask when none is given."""
        if pixel_mask is None:
            b, _, h, w = pixel_values.shape
            pixel_mask = torch.ones((b, h, w), dtype=torch.long, device=pixel_values.device)
        return pixel_mask, image_sizes_from_mask(pixel_mask).to(pixel_values.dtype)

    def decode_queries(self, feature_maps: Sequence[Tensor], content: Tensor, boxes: Tensor,
                       image_sizes: Tensor) -> AdaMixerDecoderOutput:
        """Decode an extra query group with this model's stages over already computed features.

        feature_maps: the ``feature_maps`` of a forward; content [B or 1, N', D] (pre-LayerNorm, like the table);
        boxes [B or 1, N', 4] normalised cxcywh initial boxes; image_sizes [B, 2] from the same forward.
        """
        b = feature_maps[0].shape[0]
        content = content.expand(b, -1, -1) if content.shape[0] == 1 else content
        boxes = boxes.expand(b, -1, -1) if boxes.shape[0] == 1 else boxes
        return self.model.decode(feature_maps, content, boxes, image_sizes)

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None, labels: list[dict] | None = None,
                return_dict: bool | None = None, **kwargs) -> AdaMixerObjectDetectionOutput:
        """pixel_values [B, 3, H, W]; pixel_mask [B, H, W] (1 = real pixel); labels: optional targets."""
        pixel_mask, sizes = self.image_sizes(pixel_values, pixel_mask)
        maps, masks = self.model.features(pixel_values, pixel_mask)
        content, boxes = self.model.initial_queries()
        dec = self.decode_queries(maps, content, boxes, sizes)
        logits = dec.intermediate_logits.transpose(0, 1)  # [L, B, N, C]
        pred_boxes = dec.intermediate_boxes.transpose(0, 1)
        aux = None
        if self.config.auxiliary_loss:
            aux = [{"logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], pred_boxes[:-1])]
        loss = loss_dict = None
        if labels is not None:
            res = self.criterion().to(logits.device)(logits, pred_boxes, labels)
            loss, loss_dict = res.loss, dict(res.loss_dict)
        return AdaMixerObjectDetectionOutput(
            loss=loss, loss_dict=loss_dict, logits=logits[-1], pred_boxes=pred_boxes[-1], auxiliary_outputs=aux,
            intermediate_logits=dec.intermediate_logits, intermediate_boxes=dec.intermediate_boxes,
            intermediate_hidden_states=dec.intermediate_hidden_states, feature_maps=tuple(maps),
            feature_masks=tuple(masks), image_sizes=sizes)
