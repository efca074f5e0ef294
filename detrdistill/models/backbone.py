"""Where a detector keeps its backbone network, and the ``model.backbone.freeze`` policy.

transformers freezes the whole HF-ResNet backbone of DETR / Conditional DETR / Deformable DETR by mistake (its name
filter looks for ``"stage.1"``, the parameters are called ``stages.1``), so :func:`apply_backbone_freeze` always
unfreezes first and then freezes ``"none"`` (nothing), ``"stem"`` (:data:`STEM_PREFIXES`) or ``"all"``.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError, ModelError

__all__ = ["backbone_module", "backbone_parameter_ids", "apply_backbone_freeze", "stem_prefix", "stem_parameters",
           "STEM_PREFIXES"]


def _backbone_mixin() -> type:
    """transformers' base class of every backbone network (ResNet, HGNetV2, ...)."""
    try:
        from transformers.backbone_utils import BackboneMixin
    except ImportError:  # pragma: no cover - older layout
        from transformers.utils.backbone_utils import BackboneMixin
    return BackboneMixin


def backbone_module(model: nn.Module) -> nn.Module:
    """The transformers backbone network (e.g. ``ResNetBackbone``) inside ``model.model.backbone``, or anywhere in
    ``model.model`` when it has no ``backbone`` (DEIMv2 keeps it in ``conv_encoder`` with its input projections)."""
    BackboneMixin = _backbone_mixin()
    container = getattr(model.model, "backbone", None)
    container = model.model if container is None else container
    for m in container.modules():
        if isinstance(m, BackboneMixin):
            return m
    raise ModelError(f"no transformers backbone found in {type(container).__name__}")


def backbone_parameter_ids(module: nn.Module) -> set[int]:
    """``id()`` of every parameter of every transformers backbone network anywhere inside ``module`` (a detector,
    a task, a distiller), whatever the attribute it lives under."""
    BackboneMixin = _backbone_mixin()
    return {id(p) for m in module.modules() if isinstance(m, BackboneMixin) for p in m.parameters()}


def apply_backbone_freeze(model: nn.Module, freeze: str) -> None:
    """Unfreeze the whole backbone (undoing transformers' freeze bug), then freeze per policy.

    ``"none"``: everything trainable; ``"stem"``: the ResNet embedder (first conv) or a ViT's patch / position
    embeddings fixed (:data:`STEM_PREFIXES`); ``"all"``: whole backbone fixed. The ResNets' BatchNorm layers are
    transformers' FrozenBatchNorm2d in every family (buffers, never trained); ViT backbones use LayerNorm.
    """
    if freeze not in ("none", "stem", "all"):
        raise ConfigError(f"model.backbone.freeze must be 'none', 'stem' or 'all', got {freeze!r}")
    bb = backbone_module(model)
    for p in bb.parameters():
        p.requires_grad_(True)
    if freeze == "all":
        for p in bb.parameters():
            p.requires_grad_(False)
    elif freeze == "stem":
        stem = stem_parameters(bb)
        if not stem:
            raise ModelError(f"{type(bb).__name__} has no stem ({' / '.join(STEM_PREFIXES)}) parameters to freeze")
        for p in stem:
            p.requires_grad_(False)


#: where a backbone's stem lives: a ResNet's ``embedder`` (first conv), a ViT's ``embeddings`` (patch projection,
#: position embeddings, class / mask tokens); the first prefix the backbone has is its stem
STEM_PREFIXES = ("embedder.", "embeddings.")


def stem_prefix(backbone: nn.Module) -> str | None:
    """The first of :data:`STEM_PREFIXES` some parameter of ``backbone`` lives under: where ``backbone.freeze: stem``
    applies; None when there is no stem."""
    names = [n for n, _ in backbone.named_parameters()]
    return next((p for p in STEM_PREFIXES if any(n.startswith(p) for n in names)), None)


def stem_parameters(backbone: nn.Module) -> list[nn.Parameter]:
    """The parameters ``backbone.freeze: stem`` fixes (see :data:`STEM_PREFIXES`); empty when there is no stem."""
    prefix = stem_prefix(backbone)
    return [p for n, p in backbone.named_parameters() if prefix and n.startswith(prefix)]
