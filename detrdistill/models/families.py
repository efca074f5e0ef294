"""The family registry: one :class:`FamilySpec` per detector family, everything else derives from it.

A family is declared once, beside its adapter class, as ``FAMILY_SPECS = (FamilySpec(...), ...)`` in its module
under :mod:`detrdistill.models.adapters` (every module there is discovered on first use). The spec names:

* ``adapter``: the :class:`~detrdistill.models.adapters.base.DetectorAdapter` subclass that views the model;
* ``model_types``: the ``config.model_type`` values of saved checkpoints it handles (dispatch of
  :func:`family_of`, :func:`spec_of`, :func:`get_adapter` and checkpoint loading);
* ``config_class`` / ``model_class``: the model's config and ``*ForObjectDetection`` classes, given as classes
  (a family whose model is the project's own) or as names of ``transformers`` attributes (resolved lazily);
* ``config_kwargs``: our :class:`~detrdistill.config.ModelConfig` -> the config class's keyword arguments;
* ``after_build``: fix-ups applied to a from-scratch model (e.g. RT-DETR's BatchNorm init);
* ``load_kwargs``: config overrides applied when a checkpoint of the family is loaded;
* ``capabilities``: what the family offers (see :data:`CAPABILITIES`; each one is read by the code that
  depends on it, listed there);
* ``image_processor`` / ``image_processor_kwargs``: the transformers image processor class written into exported
  model folders, and settings it needs beside the resize / normalisation every family gets;
* ``size_multiple``: padded input sides an exported graph is traced at (and the square pad of ``square_padding``
  families) are multiples of it;
* ``auto_classes``: for a family whose model classes are the project's own, the function that registers them with
  transformers' Auto classes and pipelines (the model card names it; the user calls it explicitly);
* ``onnx_unsupported``: why the family cannot be exported to ONNX (``detrdistill export`` refuses it in one line);
* ``onnx_static_size``: why the family's ONNX graph has a static height / width (only the batch is dynamic): it is
  traced at exactly its image processor's square pad (needs ``square_padding``), the size every image is padded to,
  with what cannot be traced size-generically computed in PyTorch for that size (``export/onnx_export.py``); the
  metadata records the size (``input_size``) and ``predict`` / ``eval`` on the ``.onnx`` feed only it;
* :attr:`FamilySpec.postprocessing`: how final logits become detections (from the adapter's
  ``class_activation``), written into ONNX metadata and used by ``predict`` / ``eval``.
* ``input_sides``: the padded batch sizes a model of the family accepts (:class:`InputSides`, from its transformers
  config), when that is something else than sides that are multiples of ``size_multiple``.

``model.family`` (:func:`~detrdistill.models.family_index.check_family`), :func:`detrdistill.models.build.build_model`,
:func:`family_of`, :func:`spec_of` and the adapter lookup (:func:`get_adapter`) all read this registry; adding a
family is one new adapter module plus its tests. The adapter modules import this module (for :class:`FamilySpec`);
the registry lists and imports them on first use (``_discover``).
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import UnsupportedFamilyError
from .family_index import unknown_family_error

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ..config import ModelConfig

__all__ = ["FamilySpec", "Postprocessing", "InputSides", "CAPABILITIES", "DETECTIONS_PER_IMAGE", "register_family",
           "unregister_family", "family_spec", "family_names", "family_of", "spec_of", "get_adapter", "adapter_class",
           "all_specs"]

# capability vocabulary, read instead of family names (who reads each one in brackets):
# "query_table": a learned query table with the default config (tests/test_capabilities.py checks the adapter);
# "multi_scale": several feature levels (model.num_feature_levels is honoured; checked the same way);
# "two_stage" / "box_refine": the config switches model.two_stage / model.with_box_refine are honoured
#     (build_model warns that a family without the capability ignores them);
# "pixel_mask": the model reads a pixel mask (export/onnx_export.py: the ONNX graph takes a pixel_mask input);
# "square_padding": the model ignores padding and needs sides that are multiples of ``size_multiple``
#     or of the model's ``input_sides`` (export/processor.py: its processor pads every image to one fixed square;
#     the ONNX metadata says so; export/onnx_export.py: a family with ``onnx_static_size`` is traced at that square)
CAPABILITIES = frozenset({"query_table", "multi_scale", "two_stage", "box_refine", "pixel_mask", "square_padding"})

# detections kept per image by the post-processing (COCO's maxDets 100); evaluation, predict and ONNX metadata
DETECTIONS_PER_IMAGE = 100


@dataclass(frozen=True)
class Postprocessing:
    """How a family's final ``logits`` [B, N, C'] and ``pred_boxes`` [B, N, 4] become detections
    (:func:`detrdistill.engine.evaluator.postprocess`).

    activation: ``"sigmoid"`` (C independent classes; the ``top_k`` best (query, class) pairs over all queries)
    or ``"softmax"`` (C + 1 classes, the last = no object; each query's best real class, the ``top_k`` best
    queries). Boxes are normalised (cx, cy, w, h) relative to the resized, un-padded image.
    """
    activation: str
    top_k: int = DETECTIONS_PER_IMAGE


@dataclass(frozen=True)
class InputSides:
    """The padded ``[H, W]`` a model accepts: both sides multiples of ``multiple``, and ``H == W`` when ``square``.

    E.g. a ViT backbone with windowed attention needs ``patch_size * windows per side``; RF-DETR's window partition
    is only spatially correct on a square token grid (transformers' ``window_partition``).
    """
    multiple: int = 32
    square: bool = False

    def accepts(self, height: int, width: int) -> bool:
        return height % self.multiple == 0 and width % self.multiple == 0 and (height == width or not self.square)

    def describe(self) -> str:
        return f"{'square, ' if self.square else ''}sides multiples of {self.multiple}"


@dataclass(frozen=True)
class FamilySpec:
    name: str
    adapter: type
    config_class: type | str
    model_class: type | str
    config_kwargs: Callable[["ModelConfig"], dict[str, Any]]
    model_types: tuple[str, ...] = ()
    after_build: Callable[["nn.Module"], None] | None = None
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    # transformers image processor whose post-processing matches ours for this family (see detrdistill.export)
    image_processor: str = "DeformableDetrImageProcessor"
    image_processor_kwargs: Mapping[str, Any] = field(default_factory=dict)
    size_multiple: int = 32
    auto_classes: Callable[[], None] | None = None
    onnx_unsupported: str | None = None
    # why the ONNX graph takes only the processor's square pad (static height / width); None = dynamic
    onnx_static_size: str | None = None
    # padded input sizes a model of the family accepts, from its transformers config; None = size_multiple
    input_sides: Callable[[Any], InputSides] | None = None

    def __post_init__(self) -> None:
        if not self.model_types:
            object.__setattr__(self, "model_types", (self.name,))
        if self.size_multiple < 1:
            raise ValueError(f"family {self.name!r}: size_multiple must be >= 1, got {self.size_multiple}")
        unknown = set(self.capabilities) - CAPABILITIES
        if unknown:
            raise ValueError(f"family {self.name!r}: unknown capabilities {sorted(unknown)}; known {sorted(CAPABILITIES)}")
        if self.onnx_static_size and "square_padding" not in self.capabilities:
            raise ValueError(f"family {self.name!r}: onnx_static_size needs the square_padding capability (the static "
                             "size is the processor's square pad)")

    @property
    def class_activation(self) -> str:
        """``"sigmoid"`` or ``"softmax"``: the adapter's ``class_activation``."""
        return self.adapter.class_activation

    @property
    def postprocessing(self) -> Postprocessing:
        return Postprocessing(activation=self.class_activation)

    def sides(self, config: Any) -> InputSides:
        """The padded input sizes a model of this family with transformers ``config`` accepts."""
        return self.input_sides(config) if self.input_sides is not None else InputSides(self.size_multiple)

    def resolve_config_class(self) -> type:
        return _resolve(self.config_class)

    def resolve_model_class(self) -> type:
        return _resolve(self.model_class)


def _resolve(cls: type | str) -> type:
    if isinstance(cls, str):
        import transformers
        return getattr(transformers, cls)
    return cls


_SPECS: dict[str, FamilySpec] = {}
_discovered = False


def _discover() -> None:
    """Import every adapter module once and register the specs it declares in ``FAMILY_SPECS``."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    from . import adapters

    for info in sorted(pkgutil.iter_modules(adapters.__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{adapters.__name__}.{info.name}")
        for spec in getattr(module, "FAMILY_SPECS", ()):
            if spec.name not in _SPECS:
                register_family(spec)


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add ``spec`` to the registry (a name or model_type already taken by another family raises)."""
    _discover()
    if spec.name in _SPECS:
        raise ValueError(f"family {spec.name!r} is already registered")
    taken = {mt: s.name for s in _SPECS.values() for mt in s.model_types}
    clash = [mt for mt in spec.model_types if mt in taken]
    if clash:
        raise ValueError(f"family {spec.name!r}: model_type {clash[0]!r} already belongs to {taken[clash[0]]!r}")
    _SPECS[spec.name] = spec
    return spec


def unregister_family(name: str) -> None:
    """Remove a family (tests registering a temporary one)."""
    _SPECS.pop(name, None)


def all_specs() -> tuple[FamilySpec, ...]:
    _discover()
    return tuple(_SPECS.values())


def family_names() -> tuple[str, ...]:
    """Every registered family, in registration order."""
    return tuple(s.name for s in all_specs())


def family_spec(name: str) -> FamilySpec:
    """The spec of family ``name``; raises :class:`UnsupportedFamilyError` listing the registered ones."""
    _discover()
    spec = _SPECS.get(name)
    if spec is None:
        raise unknown_family_error(name, family_names())
    return spec


def family_of(model_type: str | None) -> str | None:
    """Our family name for a saved model's ``config.model_type`` (``"dab-detr"`` -> ``"dab_detr"``), else None."""
    for spec in all_specs():
        if model_type in spec.model_types:
            return spec.name
    return None


def spec_of(model: "nn.Module") -> FamilySpec:
    """The spec of a detector's family, by its ``config.model_type``; :class:`UnsupportedFamilyError` (listing the
    supported families) for a model no family handles."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        raise UnsupportedFamilyError(f"{type(model).__name__} is not a transformers model (no config.model_type); "
                                     f"supported families: {', '.join(family_names())}")
    family = family_of(model_type)
    if family is None:
        raise UnsupportedFamilyError(f"no detector adapter for model_type {model_type!r} ({type(model).__name__}); "
                                     f"supported families: {', '.join(family_names())}")
    return _SPECS[family]


def get_adapter(model: "nn.Module"):
    """The :class:`~detrdistill.models.adapters.base.DetectorAdapter` of ``model``'s family wrapping ``model``
    (build one first with :func:`detrdistill.models.build.build_model`)."""
    return spec_of(model).adapter(model)


def adapter_class(family_or_model_type: str) -> type | None:
    """The adapter class of a family (or of a saved model's ``model_type``), or None when unknown."""
    _discover()
    spec = _SPECS.get(family_of(family_or_model_type) or family_or_model_type)
    return spec.adapter if spec is not None else None
