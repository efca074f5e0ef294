"""D-FINE adapter (``DFineForObjectDetection``), and the base of the DEIMv2 one (:mod:`.deimv2`).

D-FINE is RT-DETR with a decoder that predicts boxes as distributions (Fine-grained Distribution Refinement), so
the adapter derives from :class:`~.rt_detr.RTDetrAdapter` (same hybrid encoder, dynamic top-k queries ``content``
``[B, N, d]`` + ``reference`` ``[B, N, 4]``, denoising groups only in the family's own training forward, decoder
replayed for :meth:`decode_group`). What D-FINE changes, as exposed here:

* **boxes**: each layer l predicts per-edge distributions ``pred_corners`` ``[B, N, 4 * (max_num_bins + 1)]``
  (cumulative over layers); the box is their integral under the weighting function around the layer-0 box.
  The adapter reports the decoded boxes, normalised cxcywh as every family (``intermediate_reference_points``);
  the distributions stay with the model (its own FGL / DDF losses read them);
* **logits**: the class head plus the Location Quality Estimator (LQE: a score from the distribution's top-k
  probabilities), i.e. the model's own ``intermediate_logits``;
* **stages**: transformers' decoder output puts an extra "pre-bbox head" prediction (layer 0's class head before
  LQE, with the ``pre_bbox_head`` box) in front of the L layers; the adapter's L stages are the L layers (stage
  L-1 is the model's ``logits`` / ``pred_boxes``), the pre-bbox prediction is dropped;
* **eval mode**: D-FINE's decoder computes the class head of its ``eval_idx`` layer only when it is not training
  (``intermediate_logits`` ``[B, 1, N, C]``). The boxes and hidden states of every layer are computed either way;
  only the heads are skipped. :meth:`DFineAdapter._every_stage` sets the decoder module's own ``training`` flag
  (that module alone, not its layers: dropout stays off) for the duration of the call, so every layer's heads run
  and nothing the model predicts changes. ``eval_idx`` other than the last layer is refused: transformers 5.25
  then builds more decoder layers than box heads and fails (IndexError) in either mode;
* **embeddings**: ``intermediate_hidden_states`` is layer-first ``[L, B, N, d]`` (RT-DETR's is batch-first).

Depends on the decoder keyword names of transformers' ``DFineDecoder`` (``decoder_kwargs``, checked when the
adapter is built) and on its ``self.training`` test choosing which layers get their class head.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import Tensor, nn

from ...errors import ModelError
from ..families import FamilySpec
from .rt_detr import RTDetrAdapter, rt_detr_config_kwargs

__all__ = ["FAMILY_SPECS", "DFineAdapter", "decoder_heads_on_every_layer"]


@contextmanager
def decoder_heads_on_every_layer(decoder: nn.Module) -> Iterator[None]:
    """While active, a D-FINE-style decoder applies its class head (and LQE) to every layer, as in training.

    Sets ``decoder.training`` (the decoder module only; its layers keep their mode, so dropout stays as it was) and
    restores it after. In ``DFineDecoder.forward`` that flag only selects the layers whose logits are reported.
    """
    before = decoder.training
    decoder.training = True
    try:
        yield
    finally:
        decoder.training = before


class DFineAdapter(RTDetrAdapter):
    """:class:`DetectorAdapter` of D-FINE (sigmoid / focal-style classification, C logits); see the module docstring.

    ``state["decoder_kwargs"]`` holds the captured decoder kwargs (flattened memory, spatial shapes, ...).
    """

    family = "d_fine"
    model_types = ("d_fine",)
    family_loss_class = "DFineLoss"

    def _check_model(self) -> None:
        super()._check_model()
        cfg = self.model.config
        last = cfg.decoder_layers - 1
        eval_idx = cfg.eval_idx if cfg.eval_idx >= 0 else cfg.decoder_layers + cfg.eval_idx
        if eval_idx != last:
            raise ModelError(f"{cfg.model_type}: eval_idx={cfg.eval_idx} is not supported (transformers builds more "
                             f"decoder layers than box heads and fails); use eval_idx=-1 (the last of "
                             f"{cfg.decoder_layers} layers)")

    def _every_stage(self):
        return decoder_heads_on_every_layer(self._decoder())

    def _group_state(self, dec_out, boxes: Tensor, scale: Tensor | None) -> dict:
        """RT-DETR's, plus the group's box distributions and their layer-0 reference (model frame)."""
        return {**super()._group_state(dec_out, boxes, scale), "corners": dec_out.intermediate_predicted_corners,
                "initial_reference": dec_out.initial_reference_points}

    def _stages(self, dec_out, keep: slice) -> tuple[Tensor, Tensor, Tensor]:
        """``intermediate_logits`` / ``_reference_points`` ``[B, 1 + L, Q, ...]`` (pre-bbox head first, dropped),
        ``intermediate_hidden_states`` ``[L, B, Q, d]``."""
        return (dec_out.intermediate_logits[:, 1:, keep].transpose(0, 1),
                dec_out.intermediate_reference_points[:, 1:, keep].transpose(0, 1),
                dec_out.intermediate_hidden_states[:, :, keep])


# no after_build: unlike RT-DETR's, transformers initialises D-FINE's (and DEIMv2's) BatchNorm weights to 1, and a
# from-scratch model's train-mode encoder memory has unit scale (measured); the model ignores the pixel mask, so no
# "pixel_mask" capability, and its processor pads to one square ("square_padding")
FAMILY_SPECS = (
    FamilySpec(name="d_fine", adapter=DFineAdapter, image_processor="RTDetrImageProcessor", config_class="DFineConfig",
               model_class="DFineForObjectDetection", config_kwargs=rt_detr_config_kwargs,
               capabilities=frozenset({"multi_scale", "square_padding"})),
)
