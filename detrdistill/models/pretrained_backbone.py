"""Start a student's backbone from pretrained weights: ``model.backbone.pretrained``.

The value names a transformers ResNet (``model_type: resnet``): a local directory or a hub id such as
``microsoft/resnet-18`` / ``microsoft/resnet-50`` (an image-classification checkpoint or a bare backbone), resolved
by :func:`detrdistill.models.pretrained.resolve_model`. Its config decides the backbone's architecture
(``embedding_size``, ``hidden_sizes``, ``depths``, ``layer_type`` replace the ``model.backbone`` values); the rest of
the detector is built from scratch as usual, then the ResNet weights (convolutions and the BatchNorm statistics,
frozen in every family) are copied into the detector's backbone, every tensor accounted for.

timm ResNet checkpoints (``timm/resnet50.a1_in1k``, or a directory in timm's hub layout) work too, without timm: the
plain timm ResNets are the same network, and their weights are renamed (:mod:`.timm_resnet`).
"""
from __future__ import annotations

import logging
import pickle

from torch import nn

from ..config import BackboneConfig
from ..errors import ModelError
from .model_dir import weights_failure
from .pretrained import ModelSource, resolve_model
from .timm_resnet import is_timm_config, timm_resnet_arch, timm_to_transformers_state

log = logging.getLogger("detrdistill")

__all__ = ["pretrained_backbone_config", "load_backbone_weights"]

_ARCH_KEYS = ("embedding_size", "hidden_sizes", "depths", "layer_type")


def pretrained_backbone_config(bb: BackboneConfig) -> tuple[BackboneConfig, ModelSource]:
    """``bb`` with the architecture of the ResNet named by ``bb.pretrained``, and where that ResNet comes from."""
    source = resolve_model(bb.pretrained, what="model.backbone.pretrained")
    cfg = source.config
    if is_timm_config(cfg):
        arch = timm_resnet_arch(cfg, bb.pretrained)
        log.info("model.backbone.pretrained %s: timm %s, loaded as a transformers ResNet", bb.pretrained,
                 cfg["architecture"])
        return bb.model_copy(update=arch), source
    if cfg.get("model_type") != "resnet":
        raise ModelError(f"model.backbone.pretrained: {bb.pretrained!r} is a {cfg.get('model_type')!r} model; give a "
                         "transformers ResNet (e.g. microsoft/resnet-18 or a directory saved from one)")
    if int(cfg.get("num_channels", 3)) != 3:
        raise ModelError(f"model.backbone.pretrained: {bb.pretrained!r} takes {cfg['num_channels']} input channels, not 3")
    missing = [k for k in _ARCH_KEYS if k not in cfg]
    if missing:
        raise ModelError(f"model.backbone.pretrained: {bb.pretrained!r} config.json lacks {missing}")
    arch = {k: cfg[k] for k in _ARCH_KEYS}
    changed = {k: v for k, v in arch.items() if getattr(bb, k) != v}
    if changed:
        log.info("model.backbone.pretrained %s: backbone architecture taken from it (%s)", bb.pretrained,
                 ", ".join(f"{k}={v}" for k, v in changed.items()))
    return bb.model_copy(update=arch), source


def load_backbone_weights(backbone: nn.Module, source: ModelSource) -> None:
    """Copy the pretrained ResNet's weights into ``backbone`` (a transformers ``ResNetBackbone``); every tensor of
    ``backbone`` must be covered, only BatchNorm's ``num_batches_tracked`` counters may be left over."""
    if is_timm_config(source.config):
        state = timm_to_transformers_state(_timm_weights(source))
    else:
        state = {k: v for k, v in _transformers_resnet(source).state_dict().items()
                 if not k.endswith("num_batches_tracked")}
    own = backbone.state_dict()
    bad = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    missing = [k for k in own if k not in state]
    if bad or missing:
        raise ModelError(f"model.backbone.pretrained: {source.name!r} does not fit the detector's backbone "
                         f"(missing {missing[:3]}, other shapes {bad[:3]})")
    backbone.load_state_dict({k: state[k] for k in own}, strict=True)
    log.info("model.backbone.pretrained: backbone initialised from %s (%d tensors)", source.name, len(own))


def _transformers_resnet(source: ModelSource) -> nn.Module:
    from transformers import ResNetBackbone  # not AutoBackbone: it asks the hub whether the repo exists

    try:  # never code shipped with the model (auto_map)
        return ResNetBackbone.from_pretrained(source.load_arg, **source.load_kwargs, trust_remote_code=False)
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"model.backbone.pretrained: cannot load {source.name!r} ({first[:200]})") from None
    except (RuntimeError, ValueError, TypeError, KeyError, EOFError, pickle.UnpicklingError) as e:
        raise ModelError(f"model.backbone.pretrained: {source.name}: {weights_failure(e)}") from None


def _timm_weights(source: ModelSource) -> dict:
    """The state dict of a timm checkpoint (``model.safetensors``, else ``pytorch_model.bin``), local or hub."""
    import torch
    from safetensors.torch import load_file

    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = source.find_file(filename)
        if path is not None:
            try:
                return load_file(str(path)) if filename.endswith(".safetensors") else torch.load(
                    path, map_location="cpu", weights_only=True)
            except Exception as e:  # a damaged file: one line, not a stack from safetensors / pickle
                raise ModelError(f"model.backbone.pretrained: {path}: unreadable weights ({type(e).__name__}); "
                                 "download it again") from None
    raise ModelError(f"model.backbone.pretrained: {source.name!r} has neither model.safetensors nor "
                     "pytorch_model.bin")
