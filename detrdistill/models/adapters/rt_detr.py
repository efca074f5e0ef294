"""RT-DETR / RT-DETRv2 adapter (``RTDetrForObjectDetection`` / ``RTDetrV2ForObjectDetection``).

Layout of one RT-DETR forward, as exposed by :class:`RTDetrAdapter`:

* feature levels = the backbone stages fed to the hybrid encoder (``len(config.encoder_in_channels)``, strides
  8/16/32 by default). ``encoder_inputs`` are the outputs of ``model.model.encoder_input_proj`` (1x1 conv + BN,
  before AIFI), ``encoder_outputs`` the hybrid encoder's FPN/PAN output maps (``encoder_last_hidden_state``,
  before ``decoder_input_proj``). Both are ``config.encoder_hidden_dim`` wide (:attr:`feature_channels`), which
  equals ``d_model`` in the usual configs but need not. The decoder memory (``decoder_input_proj``'ed and
  flattened, including any extra levels when ``num_feature_levels`` exceeds the encoder levels) stays in
  ``state["decoder_kwargs"]["encoder_hidden_states"]``;
* ``feature_masks`` are the pixel mask downsampled to each level as the backbone downsamples it. RT-DETR itself
  ignores padding (neither the encoder nor the decoder takes a mask), the masks are only reported for the
  distiller;
* the queries are **dynamic**: the top-k encoder tokens of each image. ``DetectorOutput.queries`` holds the
  decoder's own inputs, ``content`` ``[B, N, d]`` (the top-k encoder features, detached by the model) and
  ``reference`` ``[B, N, 4]`` in sigmoid space; :meth:`query_table` raises (``learn_initial_query=True`` is
  refused: transformers' forward fails on it);
* **boxes in the real image's frame**: RT-DETR never reads the pixel mask, so its boxes are fractions of the input
  it sees, padding included. The adapter scales targets into that frame before the family loss and scales every
  box it reports (per-stage boxes, ``queries.reference``, :meth:`decode_group`'s reference in and boxes out) back to
  fractions of the real image, as every family reports them (:func:`~.base.padded_frame_scale`; nothing changes
  for an unpadded batch). A saved model therefore predicts in its padded input's frame, as one trained by
  transformers' own image processor (which converts annotations to the padded frame) does;
* the model is called **without labels** (``loss.recipe: set``, inference, the teacher): no denoising queries.
  Under ``loss.recipe: family`` the training forward passes the labels: transformers adds its contrastive
  denoising groups in front of the matching queries and computes its varifocal + L1 + GIoU loss over both
  (``RTDetrLoss``); the adapter reports the matching queries only (``dn_num_split``), so every output has exactly
  ``num_queries`` queries either way. The classification / box heads live inside the decoder, so the per-stage
  predictions are the decoder's ``intermediate_logits`` / ``intermediate_reference_points``.

D-FINE and DEIMv2 derive from RT-DETR (:mod:`.d_fine`, :mod:`.deimv2`): they override
:meth:`RTDetrAdapter._input_projections`, :meth:`RTDetrAdapter._every_stage` and :meth:`RTDetrAdapter._stages`.

Depends on the decoder keyword names of transformers' ``RTDetrDecoder`` / ``RTDetrV2Decoder``, listed in
``RTDetrAdapter.decoder_kwargs`` and checked when the adapter is built (``reference_points`` are logits).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from ...errors import ConfigError, ModelError, NoQueryTableError
from .base import (DetectorAdapter, ModuleInputCapture, ModuleOutputCapture, downsample_mask, expand_group,
                   padded_frame_scale, reference_logits, scaled_to_real_frame, targets_in_padded_frame)
from ..families import FamilySpec
from ..family_loss import summarize_family_losses
from ..process_box_counts import capture_union_count, normalised_over_processes
from ...ops.criterion import process_count
from ..hf_config import common_kwargs, resnet_config
from .group_family_loss import DISTRIBUTION_TERMS, family_loss_module, group_family_losses

if TYPE_CHECKING:  # pragma: no cover
    from ...config import ModelConfig

__all__ = ["FAMILY_SPECS", "RTDetrAdapter"]


class RTDetrAdapter(DetectorAdapter):
    """:class:`DetectorAdapter` of RT-DETR and RT-DETRv2 (sigmoid / focal-style classification, C logits).

    ``family`` is the wrapped model's ``config.model_type`` (``rt_detr`` or ``rt_detr_v2``).
    ``state["decoder_kwargs"]`` holds the captured decoder kwargs (flattened memory, spatial shapes, ...).
    """

    family = "rt_detr"
    model_types = ("rt_detr", "rt_detr_v2")
    class_activation = "sigmoid"
    decoder_kwargs = ("inputs_embeds", "encoder_hidden_states", "encoder_attention_mask", "reference_points",
                      "spatial_shapes", "spatial_shapes_list", "level_start_index")

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.family = str(model.config.model_type)  # instance attribute: rt_detr or rt_detr_v2

    def _check_model(self) -> None:
        decoder = self.model.model.decoder
        if getattr(decoder, "class_embed", None) is None or getattr(decoder, "bbox_embed", None) is None:
            raise ModelError(f"{type(self).__name__} needs the family's *ForObjectDetection model (decoder class / box "
                             "heads)")
        cfg = self.model.config
        if len(self._input_projections()) != len(cfg.encoder_in_channels):
            raise ModelError(f"{type(self).__name__}: backbone outputs and encoder_in_channels disagree")
        if getattr(cfg, "learn_initial_query", False):
            # transformers 5.24 RTDetr(V2)Model.forward calls `self.weight_embedding.tile(...)` on an nn.Embedding
            raise ModelError(f"{cfg.model_type}: learn_initial_query=True is not supported (transformers' forward "
                             "fails on it); use the default top-k encoder features as content queries")

    # ------------------------------------------------------------------ properties
    @property
    def num_feature_levels(self) -> int:
        return len(self.model.config.encoder_in_channels)

    @property
    def feature_channels(self) -> list[int]:
        return [int(self.model.config.encoder_hidden_dim)] * self.num_feature_levels

    @property
    def query_form(self) -> dict[str, int]:
        return {"content": self.d_model, "reference": 4}

    family_loss_class = "RTDetrLoss"  # transformers' loss of the family (group_family_losses)
    _family_loss: list | None = None  # built on first use

    # ------------------------------------------------------------------ forward
    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        return self._run(pixel_values, pixel_mask)  # no labels: no denoising queries, no transformers loss

    def _forward_family_loss(self, pixel_values: Tensor, pixel_mask: Tensor, targets: list[dict]) -> DetectorOutput:
        """With labels (train mode): denoising groups + varifocal loss (``RTDetrLoss``); only the matching queries
        are reported."""
        return self._run(pixel_values, pixel_mask, labels=targets)

    def _run(self, pixel_values: Tensor, pixel_mask: Tensor, labels: list[dict] | None = None) -> DetectorOutput:
        scale = padded_frame_scale(pixel_mask)  # [B, 4] real-image -> padded-input box fractions (None: no padding)
        if labels is not None:
            labels = targets_in_padded_frame(labels, scale)
        across = labels is not None and process_count() > 1  # the loss normalised over processes (process_box_counts)
        union = across and self.family_loss_class == "Deimv2Loss" and bool(self.model.config.use_dense_one_to_one)
        with ModuleInputCapture(self._decoder()) as dec_cap, \
                ModuleOutputCapture(self._input_projections()) as in_cap, self._every_stage(), \
                capture_union_count(union) as unions:
            model_out = self.model(pixel_values, pixel_mask=pixel_mask, labels=labels, return_dict=True)
        kwargs = dec_cap.require("decoder")
        encoder_inputs = in_cap.first()
        # the backbone's own masks: the pixel mask downsampled (nearest) to each level, as transformers does
        masks = [downsample_mask(pixel_mask, x.shape[-2:]) for x in encoder_inputs]
        # denoising queries come first ([dn | matching]); keep the matching ones
        dn = _denoising_count(model_out)
        keep = slice(dn, None)
        if dn:
            # decode_group replays the decoder over this memory; the denoising self-attention mask is not its own
            kwargs = {**kwargs, "inputs_embeds": kwargs["inputs_embeds"][:, keep],
                      "reference_points": kwargs["reference_points"][:, keep], "encoder_attention_mask": None}
        reference = kwargs["reference_points"]  # [B, N, 4] logits (detached by the model)
        logits, boxes, embeddings = self._stages(model_out, keep)
        out = DetectorOutput(
            logits=logits, boxes=scaled_to_real_frame(boxes, scale), embeddings=embeddings,
            encoder_inputs=encoder_inputs,
            encoder_outputs=list(model_out.encoder_last_hidden_state),
            feature_masks=masks,
            queries=QueryGroup(content=kwargs["inputs_embeds"],
                               reference=scaled_to_real_frame(reference.sigmoid(), scale)),
            state={"decoder_kwargs": kwargs, "frame_scale": scale},
        )
        if labels is not None:
            loss_dict = model_out.loss_dict
            out.loss = model_out.loss
            if across:
                counts = {"gt": sum(len(t["class_labels"]) for t in labels)}
                if union:  # every process sends the same names (one all_reduce)
                    counts["union"] = unions[-1] if unions else counts["gt"]
                loss_dict = normalised_over_processes(loss_dict, self.family_loss_class, counts, union)
                out.loss = sum(loss_dict.values())
            out.loss_dict = summarize_family_losses(loss_dict)
        return out

    # ------------------------------------------------------------------ what a derived family changes
    def _input_projections(self) -> list[nn.Module]:
        """The per-level projections in front of the hybrid encoder (their outputs are ``encoder_inputs``)."""
        return list(self.model.model.encoder_input_proj)

    def _every_stage(self) -> AbstractContextManager:
        """Context in which the decoder reports every stage (RT-DETR always does)."""
        return nullcontext()

    def _stages(self, dec_out, keep: slice) -> tuple[Tensor, Tensor, Tensor]:
        """Per-stage (logits, boxes, embeddings) ``[L, B, N, ...]`` of the queries ``keep`` from a decoder (or model)
        output: RT-DETR's are batch-first ``[B, L, Q, ...]``."""
        return (dec_out.intermediate_logits[:, :, keep].transpose(0, 1),
                dec_out.intermediate_reference_points[:, :, keep].transpose(0, 1),
                dec_out.intermediate_hidden_states[:, :, keep].transpose(0, 1))

    # ------------------------------------------------------------------ extra query groups
    def query_table(self) -> QueryGroup:
        raise NoQueryTableError(
            f"{self.family} has no learned query table: its queries are the top-k encoder tokens of each image "
            "(use DetectorOutput.queries of a forward)")

    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        self._check_group(group, ("content", "reference"))
        kwargs = out.state["decoder_kwargs"]
        memory = kwargs["encoder_hidden_states"]
        g = expand_group(group, memory.shape[0], memory.device, memory.dtype)
        scale = out.state.get("frame_scale")
        reference = g.reference if scale is None else g.reference * scale[:, None].to(g.reference)
        with self._every_stage():
            dec = self._decoder()(
                inputs_embeds=g.content,
                encoder_hidden_states=memory,
                encoder_attention_mask=None,  # the decoder's self-attention mask (denoising groups): none here
                reference_points=reference_logits(reference),
                spatial_shapes=kwargs["spatial_shapes"],
                spatial_shapes_list=kwargs["spatial_shapes_list"],
                level_start_index=kwargs["level_start_index"],
            )
        logits, boxes, embeddings = self._stages(dec, slice(None))
        return GroupOutput(logits=logits, boxes=scaled_to_real_frame(boxes, scale), embeddings=embeddings,
                           state=self._group_state(dec, boxes, scale))

    def _group_state(self, dec_out, boxes: Tensor, scale: Tensor | None) -> dict:
        """What :meth:`group_family_losses` needs of a decoded group (``boxes``: per stage, the model's frame)."""
        return {"boxes": boxes, "frame_scale": scale}

    def group_family_losses(self, group: GroupOutput, targets: list[dict], assignments: Tensor, num_boxes: float,
                            distributions_only: bool = False) -> dict[str, Tensor]:
        """The family's own loss terms (transformers' ``family_loss_class``, weighted by its ``weight_dict``) on a
        group from :meth:`decode_group`, with fixed assignments (:mod:`.group_family_loss`)."""
        if "boxes" not in group.state:
            return {}
        if self._family_loss is None:
            self._family_loss = [family_loss_module(self.family_loss_class, self.model.config)]  # not a submodule
        loss = self._family_loss[0].to(group.logits.device)
        terms = tuple(t for t in loss.losses if t in DISTRIBUTION_TERMS) if distributions_only else tuple(loss.losses)
        return group_family_losses(loss, group.state, group.logits, targets, assignments, num_boxes, terms)


def _denoising_count(model_out) -> int:
    """Number of denoising queries in front of the matching ones (0 without labels or in eval mode)."""
    meta = getattr(model_out, "denoising_meta_values", None)
    return int(meta["dn_num_split"][0]) if meta else 0


def rt_detr_config_kwargs(cfg: "ModelConfig") -> dict:
    """Hybrid encoder over C3-C5 (3 levels, fixed); ``encoder_layers`` = AIFI transformer layers. ``auxiliary_loss``
    keeps transformers' default (True): it only shapes the loss of a forward with labels (the family recipe sets
    it per call, :class:`~detrdistill.models.family_loss.FamilyLoss`), so a saved model trains on with transformers
    as the family does (every stage, the encoder and the denoising groups), not on its last stage alone."""
    if len(cfg.backbone.hidden_sizes) < 3:
        raise ConfigError(f"model.backbone.hidden_sizes: {cfg.family} needs a backbone of at least 3 stages (C3-C5)")
    return dict(common_kwargs(cfg), d_model=cfg.d_model, encoder_hidden_dim=cfg.d_model,
                encoder_in_channels=list(cfg.backbone.hidden_sizes[-3:]), feat_strides=[8, 16, 32],
                decoder_in_channels=[cfg.d_model] * 3, num_feature_levels=3,
                backbone_config=resnet_config(cfg.backbone, 3), auxiliary_loss=True)


def unit_batch_norms(model: nn.Module) -> None:
    """transformers initialises RT-DETR's BatchNorm2d weights ~ N(0, 0.01) (its init expects a pretrained
    checkpoint), which shrinks the encoder memory of a from-scratch model to ~1e-11 so every image looks the
    same. PyTorch's default (weight 1, bias 0) is what the original RT-DETR trains from."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()


FAMILY_SPECS = tuple(
    FamilySpec(name=name, adapter=RTDetrAdapter, image_processor="RTDetrImageProcessor", config_class=f"{prefix}Config",
               model_class=f"{prefix}ForObjectDetection", config_kwargs=rt_detr_config_kwargs,
               after_build=unit_batch_norms, capabilities=frozenset({"multi_scale", "square_padding"}))
    for name, prefix in (("rt_detr", "RTDetr"), ("rt_detr_v2", "RTDetrV2")))
