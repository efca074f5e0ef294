"""Base class of the detector adapters: one typed view of every DETR-family model.

An adapter wraps a transformers ``*ForObjectDetection`` model (``self.model``) and exposes exactly what the
distiller needs, in one layout for every family (see :mod:`detrdistill.models.outputs`):

* ``forward(pixel_values, pixel_mask, targets, criterion) -> DetectorOutput``: per-stage logits / boxes /
  embeddings ``[L, B, N, ...]`` (always, labels or not), per-level encoder inputs / outputs ``[B, d, H_m, W_m]``,
  per-level feature masks ``[B, H_m, W_m]`` (True = real pixel), the queries the decoder started from and a
  private ``state`` (captured decoder kwargs, memory ...) for :meth:`DetectorAdapter.decode_group`;
* ``decode_group(out, group) -> GroupOutput``: run the model's own decoder and heads on another query group over
  the memory already computed in ``out`` (a separate decoder call: the group never attends to the model's own
  queries); a group with batch dim 1 is broadcast to B;
* ``query_table() -> QueryGroup``: the learned queries the decoder starts from (batch dim 1).

Everything a family needs that transformers does not expose is written once, in that family's adapter.
Subclasses implement ``_forward``, ``decode_group``, ``query_table`` and ``query_form`` (and override the
properties whose config key differs). All tensor maths is out-of-place (transformers modifies some tensors
in place, which would break autograd on captured tensors).

The decoder kwargs are captured with a forward *pre*-hook (:class:`ModuleInputCapture`), so the adapters depend
on the keyword names of each decoder's ``forward``. Each adapter names them in ``decoder_kwargs``; they are checked
against ``inspect.signature`` when the adapter is built, so a rename in a new transformers version fails there with
:class:`~detrdistill.errors.TransformersAPIError` instead of mid-step. The contract tests
(``tests/test_adapters.py``) check every family reproduces the model's own predictions.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ...errors import NoQueryTableError, TransformersAPIError, UnsupportedFamilyError
from ..family_loss import FamilyLoss
from ..outputs import DetectorOutput, GroupOutput, QueryGroup
from .pixel_frame import (boxes_to_real_frame, default_pixel_mask, downsample_mask,  # noqa: F401  (re-exported)
                          padded_frame_scale, padded_targets_to_real_frame, scaled_to_real_frame,
                          targets_in_padded_frame)

__all__ = [
    "DetectorAdapter",
    "UnsupportedFamilyError",
    "NoQueryTableError",
    "ModuleInputCapture",
    "ModuleOutputCapture",
    "inverse_sigmoid",
    "expand_batch",
    "expand_group",
    "split_levels",
    "split_mask",
    "default_pixel_mask",
    "downsample_mask",
    "padded_frame_scale",
    "boxes_to_real_frame",
    "scaled_to_real_frame",
    "targets_in_padded_frame",
    "padded_targets_to_real_frame",
]


# ----------------------------------------------------------------------------------------------- helpers
def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """Same formula as transformers' ``inverse_sigmoid`` (every DETR family), so results match bit for bit."""
    x = x.clamp(min=0, max=1)
    x1 = x.clamp(min=eps)
    x2 = (1 - x).clamp(min=eps)
    return torch.log(x1 / x2)


def reference_logits(reference: Tensor) -> Tensor:
    """Sigmoid-space reference -> logits whose sigmoid gives ``reference`` back (to rounding).

    Unlike ``inverse_sigmoid`` there is no eps clamp, so a model's own anchors survive the round trip (RT-DETR's
    top-k can pick an invalid anchor whose logit is ``finfo.max``, i.e. a reference of exactly 1).
    Saturated entries (exactly 0 or 1) map to -inf / +inf, which the decoder's sigmoid maps back to 0 / 1;
    they get a zero gradient instead of the nan ``torch.logit`` would give there.
    """
    inside = (reference > 0) & (reference < 1)
    safe = torch.where(inside, reference, torch.full_like(reference, 0.5))
    return torch.where(inside, torch.logit(safe), torch.logit(reference.detach().clamp(0, 1)))


def expand_batch(t: Tensor | None, batch_size: int) -> Tensor | None:
    """``[N, k]`` or ``[1, N, k]`` -> ``[B, N, k]`` (a view); ``[B, N, k]`` is returned as is."""
    if t is None:
        return None
    if t.dim() == 2:
        t = t.unsqueeze(0)
    if t.dim() != 3:
        raise ValueError(f"query tensor must be [N, k], [1, N, k] or [B, N, k], got shape {tuple(t.shape)}")
    if t.shape[0] == batch_size:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"query batch dim {t.shape[0]} is neither 1 nor the image batch size {batch_size}")
    return t.expand(batch_size, -1, -1)


def expand_group(group: QueryGroup, batch_size: int, device: torch.device | None = None,
                 dtype: torch.dtype | None = None) -> QueryGroup:
    """Broadcast every field of ``group`` to batch ``batch_size`` (and move it to ``device`` / ``dtype``)."""
    def fix(t: Tensor | None) -> Tensor | None:
        t = expand_batch(t, batch_size)
        if t is not None and (device is not None or dtype is not None):
            t = t.to(device=device if device is not None else t.device, dtype=dtype if dtype is not None else t.dtype)
        return t

    n = {t.shape[-2] for t in (group.content, group.position, group.reference) if t is not None}
    if len(n) > 1:
        raise ValueError(f"QueryGroup fields disagree on the number of queries: {sorted(n)}")
    return QueryGroup(content=fix(group.content), position=fix(group.position), reference=fix(group.reference))


def split_levels(flat: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Flattened multi-level tokens ``[B, sum(H_m*W_m), d]`` -> per level ``[B, d, H_m, W_m]``."""
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    if sum(sizes) != flat.shape[1]:
        raise ValueError(f"token count {flat.shape[1]} does not match spatial shapes {list(spatial_shapes)}")
    out = []
    for chunk, (h, w) in zip(flat.split(sizes, dim=1), spatial_shapes):
        out.append(chunk.transpose(1, 2).reshape(flat.shape[0], flat.shape[2], int(h), int(w)))
    return out


def split_mask(mask: Tensor, spatial_shapes: Sequence[tuple[int, int]]) -> list[Tensor]:
    """Flattened multi-level mask ``[B, sum(H_m*W_m)]`` -> per level bool ``[B, H_m, W_m]``."""
    sizes = [int(h) * int(w) for h, w in spatial_shapes]
    if sum(sizes) != mask.shape[1]:
        raise ValueError(f"mask length {mask.shape[1]} does not match spatial shapes {list(spatial_shapes)}")
    return [chunk.reshape(mask.shape[0], int(h), int(w)).bool()
            for chunk, (h, w) in zip(mask.split(sizes, dim=1), spatial_shapes)]


class ModuleInputCapture:
    """Context manager recording the args / kwargs of the FIRST call of ``module`` inside the block.

    ``with ModuleInputCapture(model.model.decoder) as cap: model(...)`` -> ``cap.kwargs`` holds the exact
    keyword arguments the model passed to its decoder (encoder memory, masks, spatial shapes, ...).
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.args: tuple | None = None
        self.kwargs: dict[str, Any] | None = None
        self._handle = None

    def _hook(self, module, args, kwargs):
        if self.kwargs is None:
            self.args, self.kwargs = tuple(args), dict(kwargs)

    def __enter__(self) -> "ModuleInputCapture":
        self._handle = self.module.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> bool:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        return False

    def require(self, what: str = "decoder") -> dict[str, Any]:
        if self.kwargs is None:
            raise RuntimeError(f"the {what} was never called during the forward (nothing captured)")
        return self.kwargs


class ModuleOutputCapture:
    """Context manager recording the outputs of every call of each module in ``modules`` (in call order).

    ``outputs[i]`` is the list of outputs of ``modules[i]`` (one per call). ``transform`` maps the raw output
    (e.g. a tuple) to what should be kept.
    """

    def __init__(self, modules: Sequence[nn.Module], transform: Callable[[Any], Any] | None = None):
        self.modules = list(modules)
        self.transform = transform or (lambda o: o)
        self.outputs: list[list[Any]] = [[] for _ in self.modules]
        self._handles: list = []

    def __enter__(self) -> "ModuleOutputCapture":
        for i, m in enumerate(self.modules):
            self._handles.append(m.register_forward_hook(self._make_hook(i)))
        return self

    def _make_hook(self, i: int):
        def hook(module, args, output):
            self.outputs[i].append(self.transform(output))
        return hook

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return False

    def first(self) -> list[Any]:
        """The first output of every module (raises if one was never called)."""
        missing = [i for i, o in enumerate(self.outputs) if not o]
        if missing:
            raise RuntimeError(f"modules {missing} were never called during the forward")
        return [o[0] for o in self.outputs]


# ----------------------------------------------------------------------------------------------- adapter
class DetectorAdapter(nn.Module):
    """Typed view of one transformers DETR-family detector (``self.model``).

    Class attributes: ``family`` (our family name), ``model_types`` (the transformers ``config.model_type``
    values it handles; defaults to ``(family,)``), ``class_activation`` ("sigmoid": C focal-style logits,
    "softmax": C + 1 logits, the last being no-object).
    """

    family: ClassVar[str] = ""
    model_types: ClassVar[tuple[str, ...]] = ()
    class_activation: ClassVar[str] = "sigmoid"
    #: ``encoder_inputs`` come out of a normalisation layer (GroupNorm / BatchNorm, as the official code's
    #: ChannelMapper). False for a plain 1x1 projection (DETR, Conditional DETR, DAB-DETR), whose values can be in the
    #: hundreds: the feature terms then normalise both sides (``distill.feature.normalize=auto``).
    normalized_encoder_inputs: ClassVar[bool] = True
    # keyword arguments of the decoder's forward the adapter captures or passes (checked when the adapter is built)
    decoder_kwargs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module):
        super().__init__()
        config = getattr(model, "config", None)
        model_type = getattr(config, "model_type", None)
        if model_type not in self.handled_model_types():
            raise UnsupportedFamilyError(
                f"{type(self).__name__} adapts {list(self.handled_model_types())}, got a model of type {model_type!r}")
        self.model = model
        self._check_model()
        self._check_decoder_kwargs()

    # ------------------------------------------------------------------ identity / properties
    @classmethod
    def handled_model_types(cls) -> tuple[str, ...]:
        return cls.model_types or (cls.family,)

    def _check_model(self) -> None:
        """Hook for subclasses: reject configurations the adapter cannot handle (raise ModelError)."""

    def _decoder(self) -> nn.Module:
        """The decoder whose keyword arguments the adapter captures and replays."""
        return self.model.model.decoder

    def _check_decoder_kwargs(self) -> None:
        """Every name in ``decoder_kwargs`` must be an explicit parameter of the decoder's ``forward``."""
        if not self.decoder_kwargs:
            return
        decoder = self._decoder()
        params = inspect.signature(decoder.forward).parameters
        named = {n for n, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        missing = [k for k in self.decoder_kwargs if k not in named]
        if missing:
            import transformers
            raise TransformersAPIError(
                f"{type(self).__name__}: {type(decoder).__name__}.forward in transformers {transformers.__version__} "
                f"has no keyword argument {missing[0]!r} (the adapter passes {list(self.decoder_kwargs)}); install "
                "the transformers version this adapter supports or update the adapter")

    @property
    def config(self):
        return self.model.config

    @property
    def num_classes(self) -> int:
        """Number of object classes C (without the no-object class of softmax families)."""
        return int(self.model.config.num_labels)

    @property
    def num_queries(self) -> int:
        """Number of object queries N of the model's own (non-denoising) group."""
        return int(self.model.config.num_queries)

    @property
    def num_stages(self) -> int:
        """Number of decoder stages L (the leading dim of the per-stage outputs)."""
        return int(self.model.config.decoder_layers)

    @property
    def d_model(self) -> int:
        """Hidden width d of the transformer (decoder embeddings, encoder features)."""
        return int(self.model.config.d_model)

    @property
    def num_feature_levels(self) -> int:
        """Number of feature levels M of ``encoder_inputs`` / ``encoder_outputs`` / ``feature_masks``."""
        return 1

    @property
    def feature_channels(self) -> list[int]:
        """Channels per level; identical for both feature sources (``encoder_inputs`` and ``encoder_outputs``)."""
        return [self.d_model] * self.num_feature_levels

    @property
    def query_form(self) -> dict[str, int]:
        """The QueryGroup fields this family's queries consist of, with their last-dim width.

        e.g. DETR ``{"position": d}``, Deformable ``{"content": d, "position": d}``, DAB ``{"reference": 4}``.
        Used to check two adapters can exchange query groups (:func:`build_query_projection`).
        """
        raise NotImplementedError

    @property
    def backbone(self) -> nn.Module:
        """The convolutional backbone module (for freezing / optimizer parameter groups)."""
        return self.model.model.backbone

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                targets: list[dict] | None = None, criterion: Callable | None = None) -> DetectorOutput:
        """One forward of the detector.

        pixel_values [B, 3, H, W]; pixel_mask [B, H, W] (1/True = real pixel, None = all real); targets: list of
        dicts with ``class_labels`` LongTensor[T] (0-based) and ``boxes`` [T, 4] normalised cxcywh. When both
        ``targets`` and ``criterion`` are given, ``criterion(out.logits, out.boxes, targets)`` fills ``out.loss``,
        ``out.loss_dict`` and ``out.assignments``.
        """
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        if pixel_mask is None:
            pixel_mask = default_pixel_mask(pixel_values)
        elif pixel_mask.shape != (pixel_values.shape[0],) + tuple(pixel_values.shape[2:]):
            raise ValueError(f"pixel_mask shape {tuple(pixel_mask.shape)} does not match pixel_values "
                             f"{tuple(pixel_values.shape)} (expected [B, H, W])")
        if isinstance(criterion, FamilyLoss) and targets is not None and self.has_family_loss:
            with criterion.configured(self.model):
                out = self._forward_family_loss(pixel_values, pixel_mask, targets)
            out.class_activation = self.class_activation
            return out
        out = self._forward(pixel_values, pixel_mask)
        out.class_activation = self.class_activation
        if criterion is not None and targets is not None:
            self.attach_loss(out, targets, criterion)
        return out

    def _forward(self, pixel_values: Tensor, pixel_mask: Tensor) -> DetectorOutput:
        """Family-specific forward without labels (pixel_mask is never None here); the loss is attached after."""
        raise NotImplementedError

    @property
    def has_family_loss(self) -> bool:
        """Whether the family trains with its own transformers loss under ``loss.recipe: family`` (it overrides
        :meth:`_forward_family_loss`); otherwise the set criterion trains it under either recipe."""
        return type(self)._forward_family_loss is not DetectorAdapter._forward_family_loss

    def _forward_family_loss(self, pixel_values: Tensor, pixel_mask: Tensor, targets: list[dict]) -> DetectorOutput:
        """The family's own training forward: the model called with ``labels=targets`` (in train mode transformers
        adds its training-only query groups: denoising, one-to-many ...) and its own loss.

        Returns the DetectorOutput of the model's **matching queries only** (the ``num_queries`` the model keeps at
        inference; denoising / extra groups split off), exactly as :meth:`_forward` would report them, with
        ``loss`` = transformers' total loss and ``loss_dict`` = :func:`summarize_family_losses` of its loss dict.
        """
        raise NotImplementedError(f"{self.family} has no training recipe of its own")

    @staticmethod
    def attach_loss(out: DetectorOutput, targets: list[dict], criterion: Callable,
                    assignments: Tensor | None = None) -> DetectorOutput:
        """Run ``criterion(out.logits, out.boxes, targets)`` and store loss / loss_dict / assignments in ``out``;
        ``assignments`` [L, B, N] (already solved) are passed on to the criterion instead of its own matching."""
        if assignments is None:
            res = criterion(out.logits, out.boxes, targets)
        else:
            res = criterion(out.logits, out.boxes, targets, assignments=assignments)
        out.loss = res.loss
        out.loss_dict = dict(res.loss_dict)
        out.assignments = res.assignments
        return out

    # ------------------------------------------------------------------ extra query groups
    def decode_group(self, out: DetectorOutput, group: QueryGroup) -> GroupOutput:
        """Decode ``group`` with the model's decoder and heads over the memory computed in ``out``.

        A separate decoder call (the group never attends to the model's own queries); batch dim 1 broadcasts to
        B; any number of queries. Gradients reach the decoder, the heads, the memory and the group tensors.
        """
        raise NotImplementedError

    @property
    def has_group_family_loss(self) -> bool:
        """Whether :meth:`group_family_losses` can train an extra query group with the family's own loss (RT-DETR,
        D-FINE, DEIMv2); a family with a recipe but without it (LW-DETR, RF-DETR) has its group trained by the set
        criterion."""
        return type(self).group_family_losses is not DetectorAdapter.group_family_losses

    def group_family_losses(self, group: GroupOutput, targets: list[dict], assignments: Tensor, num_boxes: float,
                            distributions_only: bool = False) -> dict[str, Tensor]:
        """The family's own training loss (``loss.recipe: family``) on an extra group decoded by :meth:`decode_group`
        and supervised with fixed ``assignments`` [L, B, N] (GT index, -1 = background): ``{name: weighted loss
        with grad}``; ``distributions_only``: only the terms on box distributions (D-FINE / DEIMv2: FGL, DDF).
        ``{}`` for a family without a recipe of its own. ``targets`` are the project's (real-image fractions)."""
        return {}

    def query_table(self) -> QueryGroup:
        """The learned queries the decoder starts from, as a QueryGroup with batch dim 1 (live parameters).

        Families whose queries are built per image (two-stage Deformable, RT-DETR) raise NotImplementedError
        (preferably :class:`NoQueryTableError`); their ``DetectorOutput.queries`` hold the per-image queries.
        """
        raise NoQueryTableError(f"{self.family} has no learned query table")

    @property
    def has_query_table(self) -> bool:
        """Whether :meth:`query_table` is available (False for dynamic-query families)."""
        try:
            self.query_table()
        except NotImplementedError:
            return False
        return True

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, path, **kwargs) -> None:
        """Save the wrapped transformers model (``from_pretrained`` / ``build_model(pretrained=...)`` reload it)."""
        self.model.save_pretrained(path, **kwargs)

    def extra_repr(self) -> str:
        return (f"family={self.family!r}, classes={self.num_classes}, queries={self.num_queries}, "
                f"stages={self.num_stages}, d_model={self.d_model}, levels={self.num_feature_levels}")

    # ------------------------------------------------------------------ shared pieces for subclasses
    def _check_group(self, group: QueryGroup, required: Sequence[str]) -> None:
        missing = [f for f in required if getattr(group, f) is None]
        if missing:
            raise ValueError(f"{self.family}: the query group needs field(s) {missing} "
                             f"(query form {self.query_form})")
        for name, width in self.query_form.items():
            t = getattr(group, name)
            if t is not None and t.shape[-1] != width:
                raise ValueError(f"{self.family}: group.{name} has width {t.shape[-1]}, the model expects {width} "
                                 f"(project teacher queries with QueryProjection)")
