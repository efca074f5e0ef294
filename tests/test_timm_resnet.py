"""timm ResNet checkpoints as backbones, without timm: the renamed weights give the network timm defines.

A timm-named state dict is run through a direct implementation of timm's ResNet forward (stem, blocks, shortcuts,
stride on the bottleneck's 3x3) and through transformers' ResNetBackbone loaded with the renamed weights; the stage
outputs must agree. Then a directory in timm's hub layout starts a detector's backbone.
"""
import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from detrdistill.config import BackboneConfig
from detrdistill.errors import DetrDistillError
from detrdistill.models.backbone import backbone_module
from detrdistill.models.build import build_model
from detrdistill.models.timm_resnet import TIMM_RESNETS, timm_resnet_arch, timm_to_transformers_state

from .test_pretrained import LABELS, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")


def timm_state(arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in timm's names and shapes for ``arch`` (BatchNorm statistics not at their defaults)."""
    depths, layer_type = TIMM_RESNETS[arch]
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def conv(name, cout, cin, k):
        sd[f"{name}.weight"] = torch.randn(cout, cin, k, k, generator=g) * (2.0 / (cin * k * k)) ** 0.5

    def bn(name, c):
        sd[f"{name}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{name}.running_var"] = 0.5 + torch.rand(c, generator=g)
        sd[f"{name}.num_batches_tracked"] = torch.tensor(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    cin, expansion = 64, 4 if layer_type == "bottleneck" else 1
    for s, (n, width) in enumerate(zip(depths, (64, 128, 256, 512)), start=1):
        for b in range(n):
            p, cout = f"layer{s}.{b}", width * expansion
            if layer_type == "bottleneck":
                conv(f"{p}.conv1", width, cin, 1), bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3), bn(f"{p}.bn2", width)
                conv(f"{p}.conv3", cout, width, 1), bn(f"{p}.bn3", cout)
            else:
                conv(f"{p}.conv1", width, cin, 3), bn(f"{p}.bn1", width)
                conv(f"{p}.conv2", width, width, 3), bn(f"{p}.bn2", width)
            if b == 0 and (s > 1 or cin != cout):
                conv(f"{p}.downsample.0", cout, cin, 1), bn(f"{p}.downsample.1", cout)
            cin = cout
    sd["fc.weight"], sd["fc.bias"] = torch.randn(1000, cin, generator=g), torch.zeros(1000)
    return sd


def timm_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, arch: str) -> list[torch.Tensor]:
    """timm's ResNet forward (eval mode), written out: the 4 stage outputs."""
    depths, layer_type = TIMM_RESNETS[arch]

    def bn(t, name):
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"], sd[f"{name}.weight"],
                            sd[f"{name}.bias"], training=False, eps=1e-5)

    def conv(t, name, stride=1):
        w = sd[f"{name}.weight"]
        return F.conv2d(t, w, stride=stride, padding=w.shape[-1] // 2)

    x = F.max_pool2d(F.relu(bn(conv(x, "conv1", 2), "bn1")), 3, 2, 1)
    outs = []
    for s, n in enumerate(depths, start=1):
        for b in range(n):
            p, stride = f"layer{s}.{b}", 2 if (s > 1 and b == 0) else 1
            shortcut = bn(conv(x, f"{p}.downsample.0", stride), f"{p}.downsample.1") \
                if f"{p}.downsample.0.weight" in sd else x
            if layer_type == "bottleneck":
                y = F.relu(bn(conv(x, f"{p}.conv1"), f"{p}.bn1"))
                y = F.relu(bn(conv(y, f"{p}.conv2", stride), f"{p}.bn2"))
                y = bn(conv(y, f"{p}.conv3"), f"{p}.bn3")
            else:
                y = F.relu(bn(conv(x, f"{p}.conv1", stride), f"{p}.bn1"))
                y = bn(conv(y, f"{p}.conv2"), f"{p}.bn2")
            x = F.relu(y + shortcut)
        outs.append(x)
    return outs


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_renamed_timm_weights_compute_timms_network(arch):
    from transformers import ResNetBackbone, ResNetConfig
    sd = timm_state(arch)
    backbone = ResNetBackbone(ResNetConfig(**timm_resnet_arch({"architecture": arch}, arch),
                                           out_features=["stage1", "stage2", "stage3", "stage4"])).eval()
    missing, unexpected = backbone.load_state_dict(timm_to_transformers_state(sd), strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = backbone(x).feature_maps
        want = timm_forward(sd, x, arch)
    assert len(got) == 4
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def test_a_timm_hub_layout_dir_starts_the_detectors_backbone(tmp_path):
    d = tmp_path / "resnet18.a1_in1k"
    d.mkdir()
    sd = timm_state("resnet18", seed=3)
    save_file({k: v.contiguous() for k, v in sd.items()}, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"architecture": "resnet18", "num_classes": 1000, "num_features": 512,
                                               "pretrained_cfg": {"tag": "a1_in1k"}}))
    model = build_model(tiny_cfg(backbone=BackboneConfig(pretrained=str(d))), LABELS)
    assert model.config.backbone_config.hidden_sizes == [64, 128, 256, 512]
    bb = backbone_module(model).state_dict()
    want = timm_to_transformers_state(sd)
    assert want.keys() == {k for k in bb if not k.endswith("num_batches_tracked")}
    for k, v in want.items():
        assert torch.equal(bb[k], v), k


def test_timm_variants_and_foreign_names_are_refused(tmp_path):
    with pytest.raises(DetrDistillError, match="resnet50d.*plain timm ResNets"):
        timm_resnet_arch({"architecture": "resnet50d"}, "timm/resnet50d.a1_in1k")
    with pytest.raises(DetrDistillError, match="ResNet variant"):
        timm_to_transformers_state({"layer1.0.se.fc1.weight": torch.zeros(1)})
