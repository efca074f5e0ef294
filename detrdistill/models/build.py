"""Build (or load) the transformers ``*ForObjectDetection`` model of a family, and apply our freeze policy.

* :func:`build_model` builds from a :class:`~detrdistill.config.ModelConfig` with random init and
  transformers' own ``ResNetConfig`` backbone (no timm, no torchvision, nothing touches a hub), or loads a local
  checkpoint when ``model_cfg.pretrained`` is set.
* Either way the backbone freeze policy ``model_cfg.backbone.freeze`` is applied afterwards. transformers freezes
  the whole HF-ResNet backbone of DETR / Conditional DETR / Deformable DETR by mistake (its name filter looks for
  ``"stage.1"``, the parameters are called ``stages.1``), so we always unfreeze first and then freeze
  ``"none"`` (nothing), ``"stem"`` (the ResNet embedder: first conv; its BatchNorm is frozen anyway) or
  ``"all"`` (the whole ResNet).
* DETR and Conditional DETR are built and loaded with ``auxiliary_loss=False``: with ``True`` transformers feeds the
  layer-normed state to the next decoder layer, which changes the forward (our criterion computes the auxiliary
  losses from the adapters' per-stage outputs instead).
"""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a hub: an attempt raises instead of hanging

import torch
from torch import nn  # noqa: E402

import transformers  # noqa: E402
from transformers import PreTrainedModel, ResNetConfig  # noqa: E402

from ..config import FAMILIES, BackboneConfig, ModelConfig  # noqa: E402

__all__ = ["SUPPORTED_FAMILIES", "build_model", "load_detector", "apply_backbone_freeze", "count_parameters",
           "ParamCount", "backbone_module", "hf_config_class", "hf_model_class", "family_of_model_type"]

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(FAMILIES)

# family -> (config class, model class) names in transformers
_HF_CLASSES: dict[str, tuple[str, str]] = {
    "deformable_detr": ("DeformableDetrConfig", "DeformableDetrForObjectDetection"),
    "detr": ("DetrConfig", "DetrForObjectDetection"),
    "conditional_detr": ("ConditionalDetrConfig", "ConditionalDetrForObjectDetection"),
    "dab_detr": ("DabDetrConfig", "DabDetrForObjectDetection"),
    "rt_detr": ("RTDetrConfig", "RTDetrForObjectDetection"),
    "rt_detr_v2": ("RTDetrV2Config", "RTDetrV2ForObjectDetection"),
    "adamixer": ("AdaMixerConfig", "AdaMixerForObjectDetection"),  # ours: detrdistill.models.adamixer
}
# families whose classes live in this project, not in transformers
_PROJECT_FAMILIES = ("adamixer",)
# families whose decoder forward depends on auxiliary_loss (see module docstring)
_FORCE_NO_AUX = ("detr", "conditional_detr")


class ParamCount(NamedTuple):
    total: int
    trainable: int


def _class_namespace(family: str):
    if family in _PROJECT_FAMILIES:
        from . import adamixer

        adamixer.register_adamixer()  # from_pretrained goes through AutoModelForObjectDetection
        return adamixer
    return transformers


def hf_config_class(family: str) -> type:
    _check_family(family)
    return getattr(_class_namespace(family), _HF_CLASSES[family][0])


def hf_model_class(family: str) -> type:
    _check_family(family)
    return getattr(_class_namespace(family), _HF_CLASSES[family][1])


def _check_family(family: str) -> None:
    if family not in _HF_CLASSES:
        raise ValueError(f"unsupported model family {family!r}; supported: {', '.join(SUPPORTED_FAMILIES)}")


# ----------------------------------------------------------------------------------------------- config mapping
def _resnet_config(bb: BackboneConfig, num_levels: int, max_levels: int = 3) -> ResNetConfig:
    """transformers' own ResNet, returning the last ``num_levels`` stages (at most ``max_levels``: 3 = C3-C5)."""
    if len(bb.hidden_sizes) != len(bb.depths):
        raise ValueError(f"model.backbone: hidden_sizes ({len(bb.hidden_sizes)}) and depths ({len(bb.depths)}) "
                         "must have the same length")
    stages = [f"stage{i + 1}" for i in range(len(bb.depths))]
    n = min(num_levels, max_levels, len(stages))
    return ResNetConfig(
        embedding_size=bb.embedding_size,
        hidden_sizes=list(bb.hidden_sizes),
        depths=list(bb.depths),
        layer_type=bb.layer_type,
        out_features=stages[-n:],
    )


def _family_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """Our ModelConfig -> keyword arguments of the family's transformers config (before hf_overrides)."""
    fam = cfg.family
    common: dict[str, Any] = dict(
        num_queries=cfg.num_queries,
        decoder_layers=cfg.decoder_layers,
        encoder_layers=cfg.encoder_layers,
        encoder_ffn_dim=cfg.ffn_dim,
        decoder_ffn_dim=cfg.ffn_dim,
        encoder_attention_heads=cfg.num_heads,
        decoder_attention_heads=cfg.num_heads,
        dropout=cfg.dropout,
        auxiliary_loss=False,
    )
    if fam in ("detr", "conditional_detr"):
        return dict(common, d_model=cfg.d_model, backbone_config=_resnet_config(cfg.backbone, 1))
    if fam == "dab_detr":
        return dict(common, hidden_size=cfg.d_model, backbone_config=_resnet_config(cfg.backbone, 1))
    if fam == "deformable_detr":
        if cfg.d_model % 32:
            raise ValueError(f"deformable_detr: d_model ({cfg.d_model}) must be a multiple of 32 (GroupNorm(32))")
        kw = dict(common, d_model=cfg.d_model, num_feature_levels=cfg.num_feature_levels,
                  with_box_refine=cfg.with_box_refine, two_stage=cfg.two_stage,
                  backbone_config=_resnet_config(cfg.backbone, cfg.num_feature_levels))
        if cfg.two_stage:
            kw["two_stage_num_proposals"] = cfg.num_queries
        return kw
    if fam in ("rt_detr", "rt_detr_v2"):
        # hybrid encoder over C3-C5 (3 levels, fixed); encoder_layers = AIFI transformer layers
        if len(cfg.backbone.hidden_sizes) < 3:
            raise ValueError(f"{fam}: the backbone needs at least 3 stages (C3-C5)")
        return dict(common, d_model=cfg.d_model, encoder_hidden_dim=cfg.d_model,
                    encoder_in_channels=list(cfg.backbone.hidden_sizes[-3:]), feat_strides=[8, 16, 32],
                    decoder_in_channels=[cfg.d_model] * 3, num_feature_levels=3,
                    backbone_config=_resnet_config(cfg.backbone, 3))
    if fam == "adamixer":  # no encoder (encoder_layers unused); levels C2-C5 (+ stride-2 extras); P_in / P_out /
        # groups via hf_overrides (in_points, out_points, n_groups)
        return dict(num_queries=cfg.num_queries, d_model=cfg.d_model, decoder_layers=cfg.decoder_layers,
                    decoder_ffn_dim=cfg.ffn_dim, decoder_attention_heads=cfg.num_heads, dropout=cfg.dropout,
                    num_feature_levels=cfg.num_feature_levels,
                    backbone_config=_resnet_config(cfg.backbone, cfg.num_feature_levels, max_levels=4))
    _check_family(fam)
    raise AssertionError(fam)


def _valid_config_keys(config_cls: type) -> set[str]:
    params = inspect.signature(config_cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def build_model(model_cfg: ModelConfig, id2label: dict[int, str] | None = None) -> PreTrainedModel:
    """The transformers detector for ``model_cfg`` (random init, or ``model_cfg.pretrained``), freeze policy applied.

    ``id2label`` (0-based class ids) is required when building from scratch; with ``pretrained`` it is optional
    and, when given, must equal the checkpoint's label map. Unknown ``hf_overrides`` keys raise ValueError.
    """
    if model_cfg.pretrained:
        model = _load_pretrained(model_cfg.pretrained, id2label=id2label, expect_family=model_cfg.family)
    else:
        if not id2label:
            raise ValueError("build_model: id2label (class id -> name) is required to build a model from scratch")
        model = _build_from_scratch(model_cfg, id2label)
    apply_backbone_freeze(model, model_cfg.backbone.freeze)
    return model


def _build_from_scratch(model_cfg: ModelConfig, id2label: dict[int, str]) -> PreTrainedModel:
    fam = model_cfg.family
    _check_family(fam)
    config_cls, model_cls = hf_config_class(fam), hf_model_class(fam)
    id2label = _normalise_labels(id2label)
    kwargs = _family_kwargs(model_cfg)
    valid = _valid_config_keys(config_cls)
    for key in model_cfg.hf_overrides:
        if key not in valid:
            raise ValueError(f"model.hf_overrides: unknown key {key!r} for {config_cls.__name__}")
    kwargs.update(model_cfg.hf_overrides)
    kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    kwargs.setdefault("use_pretrained_backbone", False)  # consumed by older configs; never download weights
    kwargs.setdefault("use_timm_backbone", False)
    config = config_cls(**kwargs)
    model = model_cls(config)
    if fam in ("rt_detr", "rt_detr_v2"):
        _unit_batch_norms(model)
    return model


def _unit_batch_norms(model: nn.Module) -> None:
    """transformers initialises RT-DETR's BatchNorm2d weights ~ N(0, 0.01) (its init expects a pretrained
    checkpoint), which shrinks the encoder memory of a from-scratch model to ~1e-11 so every image looks the
    same. PyTorch's default (weight 1, bias 0) is what the original RT-DETR trains from."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.0)
                m.bias.zero_()


def _normalise_labels(id2label: dict) -> dict[int, str]:
    out = {int(k): str(v) for k, v in id2label.items()}
    if sorted(out) != list(range(len(out))):
        raise ValueError(f"id2label keys must be 0..{len(out) - 1}, got {sorted(out)[:10]}...")
    return out


# ----------------------------------------------------------------------------------------------- pretrained
def family_of_model_type(model_type: str | None) -> str | None:
    """Our family name for a transformers ``config.model_type`` (``"dab-detr"`` -> ``"dab_detr"``), else None."""
    for fam in SUPPORTED_FAMILIES:
        if hf_config_class(fam).model_type == model_type:
            return fam
    return None


def _read_family(path: Path) -> str:
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{path}: not a transformers checkpoint (no config.json)")
    try:
        model_type = json.loads(cfg_file.read_text()).get("model_type")
    except json.JSONDecodeError as e:
        raise ValueError(f"{cfg_file}: not valid JSON ({e})") from None
    family = family_of_model_type(model_type)
    if family is None:
        raise ValueError(f"{path}: model_type {model_type!r} is not a supported family "
                         f"({', '.join(SUPPORTED_FAMILIES)})")
    return family


def _load_pretrained(path: str | os.PathLike, id2label: dict[int, str] | None = None,
                     expect_family: str | None = None) -> PreTrainedModel:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise FileNotFoundError(f"pretrained checkpoint directory {str(p)!r} does not exist")
    family = _read_family(p)
    if expect_family is not None and family != expect_family:
        raise ValueError(f"{p} holds a {family!r} model but model.family is {expect_family!r}; "
                         f"set model.family={family}")
    extra: dict[str, Any] = {}
    if family in _FORCE_NO_AUX:
        extra["auxiliary_loss"] = False
    model = transformers.AutoModelForObjectDetection.from_pretrained(str(p), local_files_only=True, **extra)
    if id2label is not None:
        want = _normalise_labels(id2label)
        have = {int(k): str(v) for k, v in model.config.id2label.items()}
        if want != have:
            diff = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)][:5]
            details = ", ".join(f"{k}: checkpoint {have.get(k)!r} vs dataset {want.get(k)!r}" for k in diff)
            raise ValueError(f"{p}: label map mismatch ({len(have)} classes in the checkpoint, {len(want)} in the "
                             f"dataset; first differences: {details})")
    return model


def load_detector(path: str | os.PathLike, id2label: dict[int, str] | None = None,
                  freeze: str = "none") -> PreTrainedModel:
    """Load a local checkpoint of any supported family (e.g. a teacher); the freeze policy is applied after."""
    model = _load_pretrained(path, id2label=id2label)
    apply_backbone_freeze(model, freeze)
    return model


# ----------------------------------------------------------------------------------------------- freezing
def backbone_module(model: nn.Module) -> nn.Module:
    """The transformers backbone network (e.g. ``ResNetBackbone``) inside ``model.model.backbone``."""
    try:
        from transformers.backbone_utils import BackboneMixin
    except ImportError:  # pragma: no cover - older layout
        from transformers.utils.backbone_utils import BackboneMixin
    container = model.model.backbone
    for m in container.modules():
        if isinstance(m, BackboneMixin):
            return m
    raise ValueError(f"no transformers backbone found in {type(container).__name__}")


def apply_backbone_freeze(model: nn.Module, freeze: str) -> None:
    """Unfreeze the whole backbone (undoing transformers' freeze bug), then freeze per policy.

    ``"none"``: everything trainable; ``"stem"``: the ResNet embedder (first conv) fixed; ``"all"``: whole backbone
    fixed. BatchNorm layers are transformers' FrozenBatchNorm2d in every family (buffers, never trained).
    """
    if freeze not in ("none", "stem", "all"):
        raise ValueError(f"backbone freeze must be 'none', 'stem' or 'all', got {freeze!r}")
    bb = backbone_module(model)
    for p in bb.parameters():
        p.requires_grad_(True)
    if freeze == "all":
        for p in bb.parameters():
            p.requires_grad_(False)
    elif freeze == "stem":
        stem = [p for n, p in bb.named_parameters() if n.startswith("embedder.")]
        if not stem:
            raise ValueError(f"{type(bb).__name__} has no 'embedder' (stem) parameters to freeze")
        for p in stem:
            p.requires_grad_(False)


def count_parameters(model: nn.Module) -> ParamCount:
    """(total, trainable) parameter counts; tied parameters are counted once."""
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return ParamCount(total, trainable)
