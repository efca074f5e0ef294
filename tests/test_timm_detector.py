"""Hub checkpoints whose backbone is a timm ResNet (facebook/detr-resnet-50, SenseTime/deformable-detr) load into
transformers' own ResNet, without timm: the same predictions as the model they were written from."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from detrdistill.config import BackboneConfig, ModelConfig
from detrdistill.errors import ModelError
from detrdistill.models.backbone import backbone_module
from detrdistill.models.build import build_model, load_detector

REPO = Path(__file__).resolve().parents[1]
LABELS = {0: "cat", 1: "dog"}
RESNET18 = BackboneConfig(embedding_size=64, hidden_sizes=[64, 128, 256, 512], depths=[2, 2, 2, 2], layer_type="basic")


def _timm_name(hf_key: str) -> str:
    """transformers ResNetBackbone tensor name -> the timm ResNet's (the layout of the hub checkpoints)."""
    if m := re.fullmatch(r"embedder\.embedder\.(convolution|normalization)\.(.+)", hf_key):
        return f"{'conv1' if m[1] == 'convolution' else 'bn1'}.{m[2]}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.(convolution|normalization)\.(.+)", hf_key):
        return f"layer{int(m[1]) + 1}.{m[2]}.{'conv' if m[4] == 'convolution' else 'bn'}{int(m[3]) + 1}.{m[5]}"
    if m := re.fullmatch(r"encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.(convolution|normalization)\.(.+)", hf_key):
        return f"layer{int(m[1]) + 1}.{m[2]}.downsample.{0 if m[3] == 'convolution' else 1}.{m[4]}"
    raise AssertionError(hf_key)


def write_timm_layout(model, folder: Path, arch: str = "resnet18", legacy: bool = True, **config_extra) -> None:
    """Save ``model`` (a transformers-ResNet detector) as a timm-backbone hub checkpoint: config.json with
    ``use_timm_backbone: true, backbone: <arch>`` (``legacy``) or a ``timm_backbone`` backbone_config (transformers 5),
    and the backbone's tensors under timm's names."""
    model.save_pretrained(folder)
    cfg = json.loads((folder / "config.json").read_text())
    out_features = cfg["backbone_config"]["out_features"]
    del cfg["backbone_config"]
    if legacy:
        cfg.update(use_timm_backbone=True, backbone=arch, use_pretrained_backbone=True)
    else:
        cfg["backbone_config"] = {"model_type": "timm_backbone", "backbone": arch, "features_only": True,
                                  "num_channels": 3, "use_pretrained_backbone": False,
                                  "out_indices": [int(f[-1]) for f in out_features]}
        cfg.pop("use_timm_backbone", None)
    cfg.update(config_extra)
    (folder / "config.json").write_text(json.dumps(cfg))
    state = load_file(folder / "model.safetensors")
    prefix = "model.backbone.conv_encoder.model."
    renamed = {(prefix + _timm_name(k[len(prefix):]) if k.startswith(prefix) else k): v for k, v in state.items()}
    assert any(k.endswith("model.layer1.0.conv1.weight") for k in renamed)
    save_file(renamed, folder / "model.safetensors", metadata={"format": "pt"})


def _model(family: str, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(family=family, num_queries=10, d_model=32, encoder_layers=1, decoder_layers=2, ffn_dim=64,
                      num_heads=2, backbone=RESNET18, **kw)
    model = build_model(cfg, LABELS).eval()
    with torch.no_grad():  # a backbone whose statistics are not the init's, so a wrong renaming shows
        for m in backbone_module(model).modules():
            if hasattr(m, "running_mean"):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def _same_predictions(a, b) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 96, 128)
    mask = torch.ones(1, 96, 128, dtype=torch.long)
    with torch.no_grad():
        oa, ob = a.eval()(pixel_values=x, pixel_mask=mask), b.eval()(pixel_values=x, pixel_mask=mask)
    assert torch.allclose(oa.logits, ob.logits, atol=1e-5) and torch.allclose(oa.pred_boxes, ob.pred_boxes, atol=1e-5)


@pytest.mark.parametrize("family,kw,legacy", [
    ("detr", {"num_feature_levels": 1}, True),
    # the timm default of Deformable DETR with several levels: out_indices [2, 3, 4] (+ 1 extra level)
    ("deformable_detr", {"num_feature_levels": 4}, True),
    ("conditional_detr", {"num_feature_levels": 1}, False),
])
def test_a_timm_backbone_checkpoint_loads_into_transformers_resnet(family, kw, legacy, tmp_path, one_thread):
    model = _model(family, **kw)
    write_timm_layout(model, tmp_path / "hub", legacy=legacy)
    loaded = load_detector(tmp_path / "hub", what="distill.teacher")
    assert not getattr(loaded.config, "use_timm_backbone", False) and loaded.config.backbone_config.model_type == "resnet"
    assert type(backbone_module(loaded)).__name__ == "ResNetBackbone"
    _same_predictions(model, loaded)
    # saved again, it is an ordinary transformers folder (no timm anywhere)
    loaded.save_pretrained(tmp_path / "again")
    assert "timm" not in (tmp_path / "again" / "config.json").read_text()


def test_the_default_timm_backbone_of_a_config_without_one(tmp_path, one_thread):
    """A config.json with neither backbone_config nor use_timm_backbone: DetrConfig's default is timm's resnet50."""
    model = _model("detr", num_feature_levels=1)
    write_timm_layout(model, tmp_path / "hub")
    cfg = json.loads((tmp_path / "hub" / "config.json").read_text())
    for k in ("use_timm_backbone", "backbone", "use_pretrained_backbone"):
        cfg.pop(k)
    (tmp_path / "hub" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="do not fit"):  # resnet50 by default: bottlenecks, not this resnet18
        load_detector(tmp_path / "hub")


@pytest.mark.slow  # a fresh interpreter loading torch
def test_no_timm_is_imported(tmp_path):
    model = _model("detr", num_feature_levels=1)
    write_timm_layout(model, tmp_path / "hub")
    script = ("import sys\nfrom detrdistill.models.build import load_detector\nload_detector(sys.argv[1])\n"
              "print('timm' in sys.modules, 'torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "hub")], capture_output=True, text=True,
                         timeout=300, env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                           "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("extra,needle", [
    ({"backbone": "resnet50d"}, "timm's 'resnet50d'"),
    ({"dilation": True}, "dilated"),
])
def test_other_timm_backbones_are_refused_in_one_line(extra, needle, tmp_path):
    model = _model("detr", num_feature_levels=1)
    write_timm_layout(model, tmp_path / "hub", **extra)
    with pytest.raises(ModelError) as e:
        load_detector(tmp_path / "hub", what="distill.teacher")
    assert needle in str(e.value) and "\n" not in str(e.value) and "distill.teacher" in str(e.value)
