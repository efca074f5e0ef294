"""What LW-DETR and RF-DETR share: the adapter of their decoder, query groups and loss, and the ViT config mapping.

Both models (``LwDetrForObjectDetection``, ``RfDetrForObjectDetection``) are a ViT backbone, a projector (C2f
blocks ending in a LayerNorm: the multi-scale maps the decoder reads), a two-stage query selection and a deformable
decoder. Layout of one forward, as exposed by :class:`LwDetrBaseAdapter`:

* feature levels = the projector's maps (``config.num_feature_levels``, ``d_model`` wide). There is no transformer
  encoder between the projector and the decoder (the ViT is the encoder), so ``encoder_inputs`` and
  ``encoder_outputs`` are both these maps: the decoder memory split back into levels. ``feature_masks`` are the
  nearest-downsampled pixel masks the model uses itself (decoder value masking, valid ratios);
* queries: ``{"content": d, "reference": 4}``. The content is the learned ``query_feat`` table; the reference is
  per image: the top-k encoder proposals (scored by ``enc_out_class_embed``, boxes refined by
  ``enc_out_bbox_embed``) moved by the learned ``reference_point_embed`` deltas. The decoder's starting reference
  is therefore image-dependent and :meth:`query_table` raises; ``DetectorOutput.queries`` holds the decoder's own
  inputs (``reference`` in sigmoid space, boxes ``cxcywh``);
* per-stage predictions: the decoder's ``intermediate_hidden_states`` ``[L, B, N, d]`` (LayerNorm'ed) through the
  shared heads, every stage from the same reference (transformers' LW-DETR does not refine references between
  layers): ``box_l = (ref_xy + delta_xy * ref_wh, ref_wh * exp(delta_wh))`` with ``delta = bbox_embed(h_l)``;
* **query groups (Group DETR).** The model holds ``group_detr`` groups of ``num_queries`` queries. In eval mode it
  runs the first (inference) group only; in train mode it runs all of them, each group with its own top-k
  proposals and a self-attention restricted to the group. Every output here is the **first group** (exactly
  what eval mode computes); the others are training-only. With labels (``loss.recipe: family``) transformers
  matches and supervises every group (``LwDetrForObjectDetectionLoss``); ``loss`` is its total over all groups.
  Without labels in train mode (``loss.recipe: set``) the other groups are computed and unused;
* :meth:`decode_group` replays the decoder over ``state["decoder_kwargs"]`` with ``config.group_detr`` set to 1
  for the call, so a group of any size is one group in train mode too (no split, no attention to the model's
  queries).

Size rules (``FamilySpec.input_sides``, checked on every forward with a one-line :class:`InputSizeError`): the
ViT's window partition needs sides that are multiples of ``patch_size`` times the windows per side, and the
two-stage selection needs at least ``num_queries`` feature tokens.

Depends on the keyword names of ``LwDetrDecoder.forward`` / ``RfDetrDecoder.forward``
(``LwDetrBaseAdapter.decoder_kwargs``, checked when the adapter is built).
"""
from __future__ import annotations

import math
import re
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Iterator

import torch
from torch import Tensor, nn

from ...errors import ConfigError, InputSizeError, ModelError, NoQueryTableError
from ..families import InputSides, family_spec
from ..family_loss import summarize_family_losses
from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from .base import DetectorAdapter, ModuleInputCapture, expand_group, split_levels, split_mask

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["LwDetrBaseAdapter", "refine_boxes", "weighted_group_losses", "decoder_config_kwargs",
           "vit_backbone_kwargs", "feature_levels", "patch_side"]

_MEMORY_KEYS = ("spatial_shapes", "spatial_shapes_list", "level_start_index", "valid_ratios",
                "encoder_hidden_states", "encoder_attention_mask")


def refine_boxes(reference: Tensor, delta: Tensor) -> Tensor:
    """transformers' LW-DETR box update: reference ``[..., 4]`` cxcywh (sigmoid space) + head output ``[..., 4]``."""
    xy = delta[..., :2] * reference[..., 2:] + reference[..., :2]
    wh = delta[..., 2:].exp() * reference[..., 2:]
    return torch.cat((xy, wh), -1)


_COEFFICIENTS = {"ce": "class_loss_coefficient", "bbox": "bbox_loss_coefficient", "giou": "giou_loss_coefficient"}
_LOSS_KEY = re.compile(r"^loss_(?P<name>ce|bbox|giou)(?:_(?P<stage>\d+))?(?P<enc>_enc)?$")


def weighted_group_losses(loss_dict: dict[str, Tensor], config) -> dict[str, Tensor]:
    """transformers' LW-DETR / RF-DETR loss dict (unweighted; ``loss_ce_0`` = decoder stage 0, ``loss_ce_enc`` = the
    two-stage proposals) -> the weighted terms of its total loss, named as :func:`summarize_family_losses` expects
    (``loss_ce_aux_0``, ``loss_ce_enc_0``). ``cardinality_error*`` (logged by transformers, not in its loss) is left
    out, so the values sum to the model's ``loss``."""
    out = {}
    for key, value in loss_dict.items():
        m = _LOSS_KEY.match(key)
        if m is None:
            continue
        name = f"loss_{m['name']}" + (f"_aux_{m['stage']}" if m["stage"] else "") + ("_enc_0" if m["enc"] else "")
        out[name] = value * float(getattr(config, _COEFFICIENTS[m["name"]]))
    return out


def patch_side(patch_size) -> int:
    """A backbone ``patch_size`` (int or ``[h, w]``) as one side length (the larger of unequal ones)."""
    return int(patch_size) if isinstance(patch_size, int) else int(max(patch_size))


class LwDetrBaseAdapter(DetectorAdapter):
    """:class:`DetectorAdapter` of the LW-DETR family of models (sigmoid / focal-style classes, C logits).

    Subclasses name the family and give :meth:`level_sizes` (their projector's feature map sizes).
    ``state["decoder_kwargs"]`` holds the captured decoder memory kwargs (flattened maps, masks, shapes, ratios).
    """

    class_activation = "sigmoid"
    decoder_kwargs = ("inputs_embeds", "reference_points", *_MEMORY_KEYS)

    def _check_model(self) -> None:
        inner = getattr(self.model, "model", None)
        if not all(hasattr(self.model, a) for a in ("class_embed", "bbox_embed")) or \
                not all(hasattr(inner, a) for a in ("query_feat", "reference_point_embed", "decoder")):
            raise ModelError(f"{type(self).__name__} needs a {self.family} ForObjectDetection model (class / box "
                             "heads, query_feat, reference_point_embed, decoder)")

    # ------------------------------------------------------------------ properties
    @property
    def num_feature_levels(self) -> int:
        return int(self.model.config.num_feature_levels)

    @property
    def group_detr(self) -> int:
        """Query groups the model runs in train mode (one in eval mode)."""
        return int(self.model.config.group_detr)

    @property
    def query_form(self) -> dict[str, int]:
        return {"content": self.d_model, "reference": 4}

    @property
    def input_sides(self) -> InputSides:
        """The padded input sizes the model accepts (``FamilySpec.input_sides`` of its config)."""
        return family_spec(self.family).sides(self.model.config)

    def level_sizes(self, height: int, width: int) -> list[tuple[int, int]]:
        """The feature map size of every level for a padded ``height x width`` batch."""
        raise NotImplementedError

    def check_input_size(self, height: int, width: int) -> None:
        """Raise :class:`InputSizeError` when a padded ``height x width`` batch does not fit the model."""
        sides = self.input_sides
        if not sides.accepts(height, width):
            bb = self.model.config.backbone_config
            raise InputSizeError(
                f"{self.family}: a padded batch of {height}x{width} does not fit the model, which takes "
                f"{sides.describe()} (backbone patch_size {bb.patch_size}, num_windows {bb.num_windows}); pad the "
                "images to such sizes or build the model with fewer windows (model.hf_overrides.backbone_config)")
        tokens = sum(h * w for h, w in self.level_sizes(height, width))
        if tokens < self.num_queries:
            raise InputSizeError(
                f"{self.family}: a {height}x{width} batch gives {tokens} feature tokens, fewer than the "
                f"{self.num_queries} queries the model selects from them (model.num_queries); use larger images "
                "or fewer queries")

    # ------------------------------------------------------------------ forward
    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        return self._run(pixel_values, pixel_mask)  # no labels: no transformers loss

    def _forward_family_loss(self, pixel_values: Tensor, pixel_mask: Tensor, targets: list[dict]) -> DetectorOutput:
        """With labels (train mode): every query group and the two-stage proposals supervised by transformers'
        one-to-many group loss; only the first (inference) group is reported."""
        return self._run(pixel_values, pixel_mask, labels=targets)

    def _run(self, pixel_values: Tensor, pixel_mask: Tensor, labels: list[dict] | None = None) -> DetectorOutput:
        self.check_input_size(*pixel_values.shape[-2:])
        with ModuleInputCapture(self._decoder()) as cap:
            hf = self.model(pixel_values, pixel_mask=pixel_mask, labels=labels)
        kw = cap.require("decoder")
        n = self.num_queries  # groups are consecutive blocks of n queries; the first is the inference group
        hidden = hf.intermediate_hidden_states[:, :, :n]  # [L, B, n, d]
        reference = kw["reference_points"][:, :n]  # [B, n, 4] cxcywh
        pred = self._heads(hidden, reference)
        shapes = [(int(h), int(w)) for h, w in kw["spatial_shapes_list"]]
        levels = split_levels(kw["encoder_hidden_states"], shapes)
        out = DetectorOutput(
            logits=pred.logits, boxes=pred.boxes, embeddings=hidden,
            encoder_inputs=levels, encoder_outputs=list(levels),
            feature_masks=split_mask(kw["encoder_attention_mask"], shapes),
            queries=QueryGroup(content=kw["inputs_embeds"][:, :n], reference=reference),
            state={"decoder_kwargs": {k: kw[k] for k in _MEMORY_KEYS}},
        )
        if labels is not None:
            out.loss = hf.loss
            out.loss_dict = summarize_family_losses(weighted_group_losses(hf.loss_dict, self.model.config))
        return out

    def _heads(self, hidden: Tensor, reference: Tensor) -> GroupOutput:
        """hidden [L, B, N, d] (normed decoder states), reference [B, N, 4] -> per-stage predictions."""
        boxes = refine_boxes(reference.unsqueeze(0), self.model.bbox_embed(hidden))
        return GroupOutput(logits=self.model.class_embed(hidden), boxes=boxes, embeddings=hidden)

    # ------------------------------------------------------------------ extra query groups
    def query_table(self) -> QueryGroup:
        raise NoQueryTableError(
            f"{self.family} has no learned query table the decoder starts from: its reference boxes are the top-k "
            "encoder proposals of each image moved by learned deltas (use DetectorOutput.queries of a forward)")

    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        self._check_group(group, ("content", "reference"))
        memory = out.state["decoder_kwargs"]
        flat = memory["encoder_hidden_states"]
        g = expand_group(group, flat.shape[0], flat.device, flat.dtype)
        with self._one_group():
            dec = self._decoder()(inputs_embeds=g.content, reference_points=g.reference, **memory)
        return self._heads(dec.intermediate_hidden_states, g.reference)

    def _one_group(self):
        """``group_detr = 1`` on the decoder's config(s) for one call: in train mode the decoder's self-attention
        splits its queries into ``group_detr`` equal blocks; an extra group is one block."""
        return _group_detr_one(self._decoder())


@contextmanager
def _group_detr_one(module: nn.Module) -> Iterator[None]:
    """``group_detr = 1`` on every config under ``module`` that has one, restored after the block."""
    configs = {id(m.config): m.config for m in module.modules() if hasattr(getattr(m, "config", None), "group_detr")}
    before = {k: c.group_detr for k, c in configs.items()}
    try:
        for c in configs.values():
            c.group_detr = 1
        yield
    finally:
        for k, c in configs.items():
            c.group_detr = before[k]


def one_group_in_eval(model: nn.Module):
    """For one call of a plain LW-DETR / RF-DETR model with labels in eval mode: ``config.group_detr = 1``. The model
    then decodes one group, but transformers' loss splits its queries into ``group_detr`` groups by its own training
    flag (always True), so its eval loss would be wrong. Nothing changes in train mode or for other models."""
    return nullcontext() if model.training else _group_detr_one(model)


# ----------------------------------------------------------------------------------------------- config mapping
def feature_levels(cfg: "ModelConfig", allowed: tuple[int, ...], default: int = 1) -> int:
    """``model.num_feature_levels`` when the config sets it (it must be in ``allowed``), else the family's default."""
    if "num_feature_levels" not in cfg.model_fields_set:
        return default
    if cfg.num_feature_levels not in allowed:
        raise ConfigError(f"model.num_feature_levels: {cfg.family} makes {' or '.join(map(str, allowed))} feature "
                          f"level(s), got {cfg.num_feature_levels}")
    return cfg.num_feature_levels


def decoder_config_kwargs(cfg: "ModelConfig") -> dict:
    """The decoder / query part of ``LwDetrConfig`` / ``RfDetrConfig``: width, queries, layers, FFN, heads (self- and
    cross-attention both ``num_heads``), dropout. ``group_detr`` stays transformers' default (13).
    ``model.with_box_refine`` / ``two_stage`` are ignored with a warning (``build_model``): these families are always
    two-stage and predict every stage's boxes from the same references (no capability for either switch)."""
    return dict(d_model=cfg.d_model, num_queries=cfg.num_queries, decoder_layers=cfg.decoder_layers,
                decoder_ffn_dim=cfg.ffn_dim, decoder_self_attention_heads=cfg.num_heads,
                decoder_cross_attention_heads=cfg.num_heads, dropout=cfg.dropout,
                auxiliary_loss=True)  # transformers' default: only a forward with labels reads it (the saved model)


def vit_backbone_kwargs(cfg: "ModelConfig") -> dict:
    """The ViT backbone's keyword arguments from ``ModelConfig``: width ``d_model``, depth ``encoder_layers`` (the ViT
    is these models' encoder), ``num_heads`` heads, MLP ratio ``ffn_dim // d_model``, and the outputs of up to four
    evenly spaced layers (the last one included) fed to the projector. ``model.backbone`` (a ResNet's settings) is
    not used, except ``freeze``."""
    if cfg.encoder_layers < 1:
        raise ConfigError(f"model.encoder_layers: {cfg.family} uses it as the depth of its ViT backbone; set at least 1")
    if cfg.backbone.pretrained:
        raise ConfigError(f"model.backbone.pretrained: {cfg.family} has a ViT backbone, not a ResNet; start from a "
                          "whole checkpoint (model.pretrained) or train from scratch")
    depth = cfg.encoder_layers
    out_indices = sorted({math.ceil(depth * k / 4) for k in range(1, 5)})
    return dict(hidden_size=cfg.d_model, num_hidden_layers=depth, num_attention_heads=cfg.num_heads,
                mlp_ratio=max(1, cfg.ffn_dim // cfg.d_model), out_indices=out_indices)
