"""Detector checkpoints whose backbone is a timm ResNet, loaded into transformers' own ResNet: timm is never needed.

The best-known hub checkpoints (``facebook/detr-resnet-50``, ``SenseTime/deformable-detr``, Conditional DETR and
DAB-DETR ones) say ``"use_timm_backbone": true, "backbone": "resnet50"`` in their ``config.json`` (or nothing: those
config classes default to a timm backbone; a config saved by transformers 5 holds ``backbone_config`` with
``"model_type": "timm_backbone"``). transformers would build a ``TimmBackbone``, which needs timm, which pulls
torchvision, which replaces a pinned CPU torch. The plain timm ResNets are the same network as transformers'
``ResNetBackbone`` (:mod:`.timm_resnet`), so such a checkpoint is loaded as follows:

1. its config is rewritten: ``use_timm_backbone=False`` and a ``ResNetConfig`` of the same architecture (depths,
   widths, block type of ``resnet18/34/50/101/152``) whose ``out_features`` are the timm ``out_indices``
   (``i`` -> ``stage{i}``, ``0`` -> ``stem``);
2. the detector is loaded from its weights under that config (every tensor but the backbone's);
3. the backbone's timm-named tensors (``...backbone.conv_encoder.model.layer1.0.conv1.weight``) are renamed
   (:func:`~.timm_resnet.timm_to_transformers_state`) and loaded into the ``ResNetBackbone``, every tensor
   accounted for.

Other timm backbones (``resnet50d``, a dilated DC5 ResNet, ConvNeXt ...) are refused in one line.
"""
from __future__ import annotations

import contextlib
import json
import logging
from dataclasses import dataclass
from typing import Any

from ..errors import ModelError
from .backbone import backbone_module
from .timm_resnet import TIMM_RESNETS, timm_resnet_arch, timm_to_transformers_state

log = logging.getLogger("detrdistill")

__all__ = ["TimmBackboneSpec", "timm_backbone_of", "resnet_detector_config", "load_timm_resnet_detector"]

@dataclass(frozen=True)
class TimmBackboneSpec:
    """What a checkpoint's config says about its timm backbone."""
    name: str                    # timm architecture (``resnet50``; a ``.tag`` suffix dropped)
    out_indices: tuple[int, ...]  # timm feature indices (0 = stem, i = layer i)
    output_stride: int | None     # 16 for a dilated (DC5) backbone
    num_channels: int = 3


def _timm_dict(config_cls: type, d: dict) -> dict | None:
    """The timm backbone config (a dict) that transformers would derive from ``config.json`` ``d``, or None."""
    bc = d.get("backbone_config")
    if isinstance(bc, dict):
        return bc if bc.get("model_type") == "timm_backbone" else None
    if bc is not None or not d.get("use_timm_backbone", True):
        return None
    # the config class decides (a timm default for DETR / Deformable / Conditional / DAB-DETR, none elsewhere); without
    # backbone / backbone_kwargs so that nothing asks the hub whether a repo named like the backbone exists
    probe = {k: v for k, v in d.items() if k not in ("backbone", "backbone_kwargs", "backbone_config")}
    try:
        built = config_cls.from_dict(probe).backbone_config
    except Exception:  # not a config we can read this way: let transformers load it as it is
        return None
    if built is None or getattr(built, "model_type", None) != "timm_backbone":
        return None
    out = built.to_dict()
    out["backbone"] = d.get("backbone") or out.get("backbone") or "resnet50"
    kw = d.get("backbone_kwargs") or {}
    for key in ("out_indices", "output_stride"):
        if key in kw:
            out[key] = kw[key]
    if "in_chans" in kw:
        out["num_channels"] = kw["in_chans"]
    return out


def timm_backbone_of(config_cls: type, d: dict) -> TimmBackboneSpec | None:
    """The timm backbone a detector's ``config.json`` (``d``) asks for, None when it has another backbone."""
    t = _timm_dict(config_cls, d)
    if t is None:
        return None
    indices = t.get("out_indices") or t.get("_out_indices") or [1, 2, 3, 4]
    return TimmBackboneSpec(name=str(t.get("backbone") or "resnet50").split(".")[0],
                            out_indices=tuple(int(i) for i in indices), output_stride=t.get("output_stride"),
                            num_channels=int(t.get("num_channels") or 3))


def resnet_detector_config(config_cls: type, d: dict, where: str, overrides: dict[str, Any] | None = None):
    """``config_cls`` built from ``config.json`` ``d`` with its timm ResNet replaced by transformers' ``ResNetConfig``
    (``overrides``: config values to apply, e.g. a family's load settings); None when ``d`` has no timm backbone."""
    spec = timm_backbone_of(config_cls, d)
    if spec is None:
        return None
    if spec.name not in TIMM_RESNETS:
        raise ModelError(f"{where}: its backbone is timm's {spec.name!r}; only the plain timm ResNets "
                         f"{sorted(TIMM_RESNETS)} load without timm (install timm for others, which pulls torchvision "
                         "and its own torch build)")
    if spec.output_stride not in (None, 32):
        raise ModelError(f"{where}: its timm {spec.name} is dilated (output_stride {spec.output_stride}, a DC5 "
                         "checkpoint); transformers' ResNet has no dilation, so it needs timm")
    if spec.num_channels != 3 or not spec.out_indices or not all(0 <= i <= 4 for i in spec.out_indices):
        raise ModelError(f"{where}: unsupported timm backbone settings (in_chans {spec.num_channels}, out_indices "
                         f"{list(spec.out_indices)})")
    from transformers import ResNetConfig

    arch = timm_resnet_arch({"architecture": spec.name}, where)
    resnet = ResNetConfig(**arch, out_features=["stem" if i == 0 else f"stage{i}" for i in spec.out_indices])
    rewritten = {k: v for k, v in d.items() if k not in ("backbone", "backbone_kwargs", "use_pretrained_backbone")}
    rewritten.update(overrides or {})
    rewritten.update(use_timm_backbone=False, backbone_config=resnet.to_dict())
    return config_cls.from_dict(rewritten)


def _backbone_prefix(names: list[str], where: str) -> str:
    """The prefix of the timm ResNet's tensors among a checkpoint's tensor names: the shortest one before a
    ``conv1.weight`` under a ``backbone`` module (the stem's; the blocks' own ``conv1`` lie deeper), next to ``bn1``."""
    stems = [n[:-len("conv1.weight")] for n in names if n.endswith("conv1.weight") and "backbone." in n]
    prefix = min(stems, key=len) if stems else None
    if prefix is None or not any(n.startswith(prefix + "bn1.") for n in names):
        raise ModelError(f"{where}: cannot find its timm ResNet's weights (a tensor named ...backbone...conv1.weight "
                         "beside bn1); copy or download the model again")
    return prefix


def _weight_files(source) -> list:
    """The checkpoint's weight files: ``model.safetensors``, its shards, or ``pytorch_model.bin`` (and shards)."""
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        f = source.find_file(single)
        if f is not None:
            return [f]
        idx = source.find_file(index)
        if idx is not None:
            shards = sorted(set(json.loads(idx.read_text()).get("weight_map", {}).values()))
            files = [source.find_file(s) for s in shards]
            if shards and all(files):
                return files
    raise ModelError(f"{source.name}: no model.safetensors or pytorch_model.bin beside its config.json")


def _timm_backbone_state(source, where: str) -> dict:
    """The backbone's tensors under their timm names (``conv1.weight``, ``layer1.0.bn1.running_mean`` ...)."""
    import torch
    from safetensors import safe_open

    tensors: dict = {}
    names: list[str] = []
    loaded: list[dict] = []
    for f in _weight_files(source):
        try:
            if f.suffix == ".safetensors":
                with safe_open(str(f), "pt") as sf:
                    names += list(sf.keys())
                    loaded.append({"file": f, "keys": list(sf.keys())})
            else:
                state = torch.load(f, map_location="cpu", weights_only=True)
                names += list(state)
                loaded.append({"file": f, "state": state})
        except Exception as e:  # a damaged file: one line
            raise ModelError(f"{where}: {f}: unreadable weights ({type(e).__name__}); download it again") from None
    prefix = _backbone_prefix(names, where)
    for item in loaded:
        if "state" in item:
            tensors.update({k[len(prefix):]: v for k, v in item["state"].items() if k.startswith(prefix)})
            continue
        with safe_open(str(item["file"]), "pt") as sf:
            tensors.update({k[len(prefix):]: sf.get_tensor(k) for k in item["keys"] if k.startswith(prefix)})
    return tensors


@contextlib.contextmanager
def _quiet_transformers_loading():
    """transformers' report of the backbone tensors it did not find (they are loaded right after) is not shown."""
    from transformers.utils import logging as hf_logging
    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def load_timm_resnet_detector(model_cls: type, source, config, where: str):
    """``model_cls`` from ``source``'s weights under ``config`` (:func:`resnet_detector_config`), its ResNet backbone
    loaded from the checkpoint's timm-named tensors; every backbone tensor must be found and fit."""

    with _quiet_transformers_loading():
        model, info = model_cls.from_pretrained(source.load_arg, config=config, output_loading_info=True,
                                                trust_remote_code=False, **source.load_kwargs)
    backbone = backbone_module(model)
    state = timm_to_transformers_state(_timm_backbone_state(source, where))
    own = backbone.state_dict()
    missing = [k for k in own if k not in state]
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    extra = [k for k in state if k not in own]
    if missing or bad or extra:
        raise ModelError(f"{where}: its timm backbone weights do not fit a transformers ResNet (missing {missing[:3]}, "
                         f"other shapes {bad[:3]}, unexpected {extra[:3]})")
    backbone.load_state_dict(state, strict=True)
    outside = [k for k in info.get("missing_keys", ()) if ".backbone." not in f".{k}"]
    if outside:
        raise ModelError(f"{where}: weights missing from the checkpoint outside its backbone ({sorted(outside)[:3]})")
    unused = [k for k in info.get("unexpected_keys", ()) if ".backbone." not in f".{k}"]
    if unused:
        log.warning("%s: %d tensors of the checkpoint are not used by %s (%s)", where, len(unused), model_cls.__name__,
                    ", ".join(sorted(unused)[:3]))
    log.info("%s: timm %s backbone loaded as transformers' ResNet (%d tensors renamed; timm not needed)", where,
             _arch_name(config), len(own))
    return model


def _arch_name(config) -> str:
    bb = config.backbone_config
    for name, (depths, layer_type) in TIMM_RESNETS.items():
        if list(bb.depths) == depths and bb.layer_type == layer_type:
            return name
    return "ResNet"
