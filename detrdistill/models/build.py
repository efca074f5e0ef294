"""Build (or load) the transformers ``*ForObjectDetection`` model of a family, and apply our freeze policy.

* :func:`build_model` builds from a :class:`~detrdistill.config.ModelConfig` with random init and
  transformers' own ``ResNetConfig`` backbone (optionally started from a pretrained transformers ResNet,
  ``model.backbone.pretrained``), or loads a checkpoint (local directory or hub id) when ``model_cfg.pretrained``
  is set. Names are resolved by :mod:`detrdistill.models.pretrained` (the user's ``HF_HUB_OFFLINE`` is honoured).
* Either way the backbone freeze policy ``model_cfg.backbone.freeze`` is applied afterwards
  (:func:`detrdistill.models.backbone.apply_backbone_freeze`).
* What is family-specific (transformers classes, config mapping, fix-ups) comes from the family registry
  (:mod:`detrdistill.models.families`).
"""
from __future__ import annotations

import inspect
import logging
import os
import pickle
from typing import TYPE_CHECKING, NamedTuple

from torch import nn
from transformers import PreTrainedModel

from ..config import ModelConfig
from ..errors import ConfigError, ModelError, PathNotFoundError, UnsupportedFamilyError
from .backbone import apply_backbone_freeze, backbone_module
from .backbone_norm import apply_batch_norm_policy
from .families import all_specs, family_names, family_of, family_spec
from .model_dir import weights_failure

if TYPE_CHECKING:  # pragma: no cover
    from .pretrained import ModelSource

log = logging.getLogger("detrdistill")

__all__ = ["build_model", "load_detector", "count_parameters", "ParamCount", "hf_config_class", "hf_model_class"]


class ParamCount(NamedTuple):
    total: int
    trainable: int


def hf_config_class(family: str) -> type:
    return family_spec(family).resolve_config_class()


def hf_model_class(family: str) -> type:
    return family_spec(family).resolve_model_class()


def _valid_config_keys(config_cls: type) -> set[str]:
    params = inspect.signature(config_cls.__init__).parameters
    return {n for n, p in params.items() if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


def build_model(model_cfg: ModelConfig, id2label: dict[int, str] | None = None) -> PreTrainedModel:
    """The transformers detector for ``model_cfg`` (random init, or ``model_cfg.pretrained``), freeze policy applied.

    ``id2label`` (0-based class ids) is required when building from scratch; with ``pretrained`` (a local directory
    or hub id) it is optional and, when it differs from the checkpoint's label map, the classification heads are
    re-headed by class name (one log line). Unknown ``hf_overrides`` keys raise ValueError.
    """
    if model_cfg.pretrained:
        from .pixel_norm import warn_pretrained_pixels
        from .pretrained import resolve_model

        source = resolve_model(model_cfg.pretrained, what="model.pretrained")
        model = _load_pretrained(source, id2label=id2label, expect_family=model_cfg.family, relabel=True)
        warn_pretrained_pixels(source)  # fine-tuned on the data pipeline's pixels: said when they are not its own
    else:
        if not id2label:
            raise ModelError("build_model: id2label (class id -> name) is required to build a model from scratch")
        model = _build_from_scratch(model_cfg, id2label)
    swapped = apply_batch_norm_policy(model, model_cfg.backbone.batch_norm, model_cfg.backbone.freeze)
    if swapped:
        log.info("model.backbone.batch_norm=train: %d frozen BatchNorm layers of the backbone made trainable", swapped)
    apply_backbone_freeze(model, model_cfg.backbone.freeze)
    return model


def _build_from_scratch(model_cfg: ModelConfig, id2label: dict[int, str]) -> PreTrainedModel:
    backbone_source = None
    if model_cfg.backbone.pretrained:
        from .pretrained_backbone import pretrained_backbone_config
        bb_cfg, backbone_source = pretrained_backbone_config(model_cfg.backbone)
        model_cfg = model_cfg.model_copy(update={"backbone": bb_cfg})
    spec = family_spec(model_cfg.family)
    _check_switches(model_cfg, spec.capabilities)
    config_cls, model_cls = spec.resolve_config_class(), spec.resolve_model_class()
    id2label = _normalise_labels(id2label)
    kwargs = spec.config_kwargs(model_cfg)
    valid = _valid_config_keys(config_cls)
    for key in model_cfg.hf_overrides:
        if key not in valid:
            raise ConfigError(f"model.hf_overrides: unknown key {key!r} for {config_cls.__name__}")
    kwargs.update(_merge_subconfig_overrides(kwargs, model_cfg.hf_overrides))
    kwargs.update(id2label=id2label, label2id={v: k for k, v in id2label.items()})
    try:
        model = model_cls(config_cls(**kwargs))
    except ValueError as e:
        if "tie_weights_keys" in str(e) and model_cfg.decoder_layers < 2:
            # transformers ties the box heads of decoder layers 1..L-1 to layer 0's and refuses a model with none
            raise ConfigError(f"model.decoder_layers={model_cfg.decoder_layers}: transformers cannot build a "
                              f"{model_cfg.family} with fewer than 2 decoder layers (it ties the later layers' "
                              "box heads to the first); use model.decoder_layers >= 2") from None
        raise
    if spec.after_build is not None:
        spec.after_build(model)
    if backbone_source is not None:
        from .pretrained_backbone import load_backbone_weights
        load_backbone_weights(backbone_module(model), backbone_source)
    return model


# ModelConfig switch -> the family capability that honours it (a family without it ignores the switch)
SWITCH_CAPABILITIES = {"with_box_refine": "box_refine", "two_stage": "two_stage"}


def _check_switches(model_cfg: ModelConfig, capabilities: frozenset[str]) -> None:
    """Warn about a switch the family ignores (e.g. a Deformable DETR config with ``--set model.family=...``)."""
    for key, capability in SWITCH_CAPABILITIES.items():
        if getattr(model_cfg, key) and capability not in capabilities:
            log.warning("model.%s is ignored: the %s family has no %s mode (families with it: %s)", key,
                        model_cfg.family, capability, ", ".join(_families_with(capability)))


def _families_with(capability: str) -> list[str]:
    return [s.name for s in all_specs() if capability in s.capabilities] or ["none"]


def _merge_subconfig_overrides(kwargs: dict, overrides: dict) -> dict:
    """``hf_overrides`` where a dict given for a key the family maps to a dict (a sub-config's keyword arguments,
    e.g. the ViT ``backbone_config`` of LW-DETR / RF-DETR) is merged into it: ``{"backbone_config": {"num_windows":
    1}}`` changes one key of the derived backbone. Anything else replaces the family's value as is."""
    merged = dict(overrides)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(kwargs.get(key), dict):
            merged[key] = {**kwargs[key], **value}
    return merged


def _normalise_labels(id2label: dict) -> dict[int, str]:
    out = {int(k): str(v) for k, v in id2label.items()}
    if sorted(out) != list(range(len(out))):
        raise ModelError(f"id2label keys must be 0..{len(out) - 1}, got {sorted(out)[:10]}...")
    return out


# ----------------------------------------------------------------------------------------------- pretrained
def _family_of_config(config: dict, where: str) -> str:
    model_type = config.get("model_type")
    family = family_of(model_type)
    if family is None:
        raise UnsupportedFamilyError(f"{where}: model_type {model_type!r} is not a supported family "
                                     f"({', '.join(family_names())})")
    return family


def _load_pretrained(name: "str | os.PathLike | ModelSource", id2label: dict[int, str] | None = None,
                     expect_family: str | None = None, what: str = "model.pretrained",
                     relabel: bool = False) -> PreTrainedModel:
    """Load a local directory or hub id (:func:`detrdistill.models.pretrained.resolve_model`; an already resolved
    :class:`~detrdistill.models.pretrained.ModelSource` is used as it is). With ``id2label``: ``relabel`` re-heads a
    checkpoint of other classes by name (:func:`~detrdistill.models.label_map.relabel_model`), otherwise a different
    label map is refused."""
    from .pretrained import ModelSource, resolve_model

    source = name if isinstance(name, ModelSource) else resolve_model(name, what=what)
    family = _family_of_config(source.config, source.name)
    if expect_family is not None and family != expect_family:
        raise ModelError(f"{source.name} holds a {family!r} model but model.family is {expect_family!r}; "
                         f"set model.family={family}")
    spec = family_spec(family)
    from .timm_detector import load_timm_resnet_detector, resnet_detector_config
    # a timm ResNet backbone (facebook/detr-resnet-50, SenseTime/deformable-detr): transformers' own ResNet, no timm
    resnet_config = resnet_detector_config(spec.resolve_config_class(), source.config, f"{what} {source.name}",
                                           spec.load_kwargs)
    try:  # never code shipped with the model (auto_map): the family's own transformers class
        if resnet_config is not None:
            model = load_timm_resnet_detector(spec.resolve_model_class(), source, resnet_config, f"{what} {source.name}")
        else:
            model = spec.resolve_model_class().from_pretrained(source.load_arg, **source.load_kwargs,
                                                               **spec.load_kwargs, trust_remote_code=False)
    except ModelError:  # already one line naming the checkpoint
        raise
    except OSError as e:  # hub weights missing from the cache (offline) or not downloadable
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise PathNotFoundError(f"{what}: cannot load the weights of {source.name!r} ({first[:200]})") from None
    except ImportError as e:  # e.g. a timm backbone other than a plain ResNet
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"{what}: {source.name!r} needs a package that is not installed ({first[:160]}); "
                         "use one with a ResNet or transformers backbone (e.g. PekingU/rtdetr_r50vd)") from None
    except (RuntimeError, ValueError, TypeError, KeyError, EOFError, pickle.UnpicklingError) as e:
        raise ModelError(f"{what}: {source.name}: {weights_failure(e)}; copy or export the model again") from None
    if id2label is None:
        return model
    want = _normalise_labels(id2label)
    have = {int(k): str(v) for k, v in model.config.id2label.items()}
    if want == have:
        return model
    if relabel:
        from .label_map import relabel_model
        return relabel_model(model, want, source=f"{what} {source.name}")
    diff = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)][:5]
    details = ", ".join(f"{k}: checkpoint {have.get(k)!r} vs dataset {want.get(k)!r}" for k in diff)
    raise ModelError(f"{source.name}: label map mismatch ({len(have)} classes in the checkpoint, {len(want)} in the "
                     f"dataset; first differences: {details})")


def load_detector(path: "str | os.PathLike | ModelSource", id2label: dict[int, str] | None = None,
                  freeze: str = "none", what: str = "model") -> PreTrainedModel:
    """Load a local directory or hub id of any supported family (e.g. a teacher), or the
    :class:`~detrdistill.models.pretrained.ModelSource` it was already resolved to; the freeze policy is applied
    after. ``what`` names the setting in errors (e.g. ``"distill.teacher"``)."""
    model = _load_pretrained(path, id2label=id2label, what=what)
    apply_backbone_freeze(model, freeze)
    return model


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
