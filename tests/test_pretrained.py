"""Hub or local, everywhere a model is named: directories, a local hub cache (HF_HUB_OFFLINE=1, never a download),
checkpoints of other classes re-headed by name, and pretrained ResNet backbones."""
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrdistill.config import BackboneConfig, ModelConfig
from detrdistill.errors import DetrDistillError, PathNotFoundError
from detrdistill.models.backbone import backbone_module
from detrdistill.models.build import build_model, load_detector
from detrdistill.models.label_map import class_indexed_dims
from detrdistill.models.pretrained import looks_like_hub_id, resolve_model

REPO = Path(__file__).resolve().parents[1]
LABELS = {0: "cat", 1: "dog", 2: "car"}


def tiny_cfg(family: str = "deformable_detr", **kw) -> ModelConfig:
    kw.setdefault("backbone", BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]))
    return ModelConfig(family=family, num_queries=10, d_model=32, encoder_layers=1, decoder_layers=2, ffn_dim=64,
                       num_heads=2, num_feature_levels=2, **kw)


def hub_cache_with(model, cache: Path, repo_id: str, rev: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """Save ``model`` in the hub cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
    folder = cache / ("models--" + repo_id.replace("/", "--"))
    model.save_pretrained(folder / "snapshots" / rev)
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(rev)
    return folder / "snapshots" / rev


def test_hub_id_shape():
    assert looks_like_hub_id("SenseTime/deformable-detr") and looks_like_hub_id("detr-tiny")
    assert not looks_like_hub_id("runs/x/model") and not looks_like_hub_id("./model") and not looks_like_hub_id("/a/b")


def test_missing_local_path_is_one_line(tmp_path):
    with pytest.raises(PathNotFoundError, match="does not exist") as e:
        load_detector(tmp_path / "nope" / "model", what="distill.teacher")
    assert "\n" not in str(e.value) and "distill.teacher" in str(e.value)


def test_local_dir_loads_equal_weights(tmp_path):
    model = build_model(tiny_cfg(), LABELS)
    model.save_pretrained(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


@pytest.mark.slow  # a fresh interpreter loading torch
def test_hub_id_resolves_from_an_offline_local_cache(tmp_path):
    """A fresh process with HF_HUB_CACHE = a tmp cache and HF_HUB_OFFLINE=1 loads 'acme/tiny-detr' from it, and an
    id not in the cache is a one-line DetrDistillError."""
    model = build_model(tiny_cfg(), LABELS)
    snapshot = hub_cache_with(model, tmp_path / "hub", "acme/tiny-detr")
    script = (
        "import sys, torch\n"
        "from detrdistill.models.build import load_detector\n"
        "from detrdistill.errors import DetrDistillError\n"
        "m = load_detector('acme/tiny-detr', what='distill.teacher')\n"
        "torch.save(m.state_dict(), sys.argv[1])\n"
        "try:\n    load_detector('acme/not-cached', what='distill.teacher')\n"
        "except DetrDistillError as e:\n    print('ERR', e)\n"
        "from detrdistill.predict import resolve_model_dir\n"
        "print('DIR', resolve_model_dir('acme/tiny-detr'))\n")
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HOME=str(tmp_path / "home"), HF_HUB_OFFLINE="1",
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "state.pt")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = torch.load(tmp_path / "state.pt")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded[k]), k
    err = [line for line in out.stdout.splitlines() if line.startswith("ERR")]
    assert len(err) == 1 and "acme/not-cached" in err[0] and "HF_HUB_OFFLINE" in err[0] and "distill.teacher" in err[0]
    # predict / export take a directory: a hub id becomes its snapshot folder in the cache
    dirs = [line[4:] for line in out.stdout.splitlines() if line.startswith("DIR ")]
    assert dirs and Path(dirs[0]).resolve() == snapshot.resolve()


@pytest.mark.parametrize("family", ["deformable_detr", "detr"])
def test_pretrained_with_other_classes_is_reheaded_by_name(family, tmp_path, caplog):
    ckpt = build_model(tiny_cfg(family), {0: "person", 1: "dog", 2: "cat"})
    ckpt.save_pretrained(tmp_path / "ckpt")
    dims = class_indexed_dims(ckpt)
    assert dims, "no class-indexed tensors found"
    dataset = {0: "cat", 1: "bus", 2: "person", 3: "tree"}
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        model = build_model(tiny_cfg(family, pretrained=str(tmp_path / "ckpt")), dataset)
    assert {int(k): v for k, v in model.config.id2label.items()} == dataset
    lines = [r.getMessage() for r in caplog.records if "re-headed" in r.getMessage()]
    assert len(lines) == 1 and "kept 2 [cat, person]" in lines[0] and "re-initialised 2 [bus, tree]" in lines[0]
    assert "dropped 1" in lines[0] and "dog" in lines[0]
    old, new = ckpt.state_dict(), model.state_dict()
    extra = 1 if family == "detr" else 0  # DETR: no-object column last
    for key, v in new.items():
        if key not in dims:
            assert torch.equal(v, old[key]), key
            continue
        d = dims[key]
        assert v.shape[d] == len(dataset) + extra
        assert torch.equal(v.select(d, 0), old[key].select(d, 2))  # cat
        assert torch.equal(v.select(d, 2), old[key].select(d, 0))  # person
        if extra:
            assert torch.equal(v.select(d, 4), old[key].select(d, 3))  # no-object stays last


def test_pretrained_backbone_from_a_transformers_resnet(tmp_path):
    from transformers import ResNetConfig, ResNetForImageClassification
    resnet = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 24, 32, 48],
                                                       depths=[1, 2, 1, 1], layer_type="basic", num_labels=5))
    with torch.no_grad():  # non-default BatchNorm statistics, so copying them is checked too
        for m in resnet.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    resnet.save_pretrained(tmp_path / "resnet")
    cfg = tiny_cfg(backbone=BackboneConfig(pretrained=str(tmp_path / "resnet")))
    model = build_model(cfg, LABELS)
    bb = backbone_module(model).state_dict()
    src = {k[len("resnet."):]: v for k, v in resnet.state_dict().items() if k.startswith("resnet.")}
    assert bb.keys() <= src.keys()
    for k, v in bb.items():
        assert torch.equal(v, src[k]), k
    assert model.config.backbone_config.hidden_sizes == [16, 24, 32, 48]


def test_whole_checkpoint_and_backbone_weights_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        tiny_cfg(pretrained="a/b", backbone=BackboneConfig(pretrained="microsoft/resnet-18"))


def test_pretrained_backbone_must_be_a_resnet(tmp_path):
    build_model(tiny_cfg(), LABELS).save_pretrained(tmp_path / "det")
    with pytest.raises(DetrDistillError, match="model.backbone.pretrained.*ResNet"):
        resolve_model(tmp_path / "det")  # resolves fine as a model...
        build_model(tiny_cfg(backbone=BackboneConfig(pretrained=str(tmp_path / "det"))), LABELS)


def hub_style_rt_detr(path: Path) -> None:
    """A tiny RT-DETR saved like the hub's PekingU/rtdetr_* (transformers' RTDetrResNet backbone, COCO-style names)."""
    from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig
    bb = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                            out_features=["stage2", "stage3", "stage4"])
    names = ["person", "bicycle", "car", "dog", "cat"]
    cfg = RTDetrConfig(backbone_config=bb, encoder_in_channels=[32, 64, 128], decoder_in_channels=[32, 32, 32],
                       d_model=32, encoder_hidden_dim=32, decoder_layers=2, num_queries=10, encoder_ffn_dim=64,
                       decoder_ffn_dim=64, encoder_attention_heads=2, decoder_attention_heads=2,
                       id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    torch.manual_seed(0)
    RTDetrForObjectDetection(cfg).save_pretrained(path)


@pytest.mark.slow  # a distillation from a hub-style checkpoint
def test_hub_style_rt_detr_is_reheaded_and_distils_into_dataset_classes(tmp_path):
    from detrdistill.config import DistillConfig
    from detrdistill.distillation import Distiller
    from detrdistill.models.families import get_adapter
    from detrdistill.ops.criterion import SetCriterion
    hub_style_rt_detr(tmp_path / "rtdetr")
    ft = build_model(ModelConfig(family="rt_detr", pretrained=str(tmp_path / "rtdetr")), {0: "cat", 1: "zebra"})
    old = load_detector(tmp_path / "rtdetr")
    assert {"model.enc_score_head.weight", "model.denoising_class_embed.weight"} <= set(class_indexed_dims(old))
    assert ft.config.num_labels == 2
    torch.testing.assert_close(ft.state_dict()["model.enc_score_head.weight"][0],
                               old.state_dict()["model.enc_score_head.weight"][4])  # cat kept by name
    teacher = get_adapter(load_detector(tmp_path / "rtdetr")).eval()
    student = get_adapter(build_model(tiny_cfg(), {0: "cat", 1: "person"}))
    dist = Distiller(teacher, student, DistillConfig(query_prior={"enabled": False}), dataset_id2label={0: "cat", 1: "person"})
    x, mask = torch.randn(2, 3, 64, 64), torch.ones(2, 64, 64, dtype=torch.long)
    targets = [{"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}] * 2
    out = dist(x, mask, targets, SetCriterion(2))
    raw = teacher(x, mask).logits
    torch.testing.assert_close(out.teacher.logits, raw[..., [4, 0]])
    assert torch.isfinite(out.loss) and "logits_cls" in out.loss_dict


def _no_network(*args, **kwargs):
    raise AssertionError("the hub was asked")


def test_a_missing_relative_folder_is_one_line_at_once_without_a_hub_lookup(tmp_path, monkeypatch):
    """`--teacher runs/nope` beside a runs/ folder is a path, not the hub id runs/nope: no hub call, one line that
    says what runs/ holds."""
    import transformers.utils
    from detrdistill.models.pretrained import ModelNotFoundError
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(transformers.utils, "cached_file", _no_network)
    for name in ("runs/nope", "runs/techer", "./teacher", "runs/teacher/modle"):
        with pytest.raises(ModelNotFoundError) as e:
            resolve_model(name, what="distill.teacher")
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"distill.teacher: directory {name!r} does not exist"), msg
    assert "runs/ holds teacher" in msg or "runs/teacher/ holds" in msg


def test_hub_ids_still_reach_the_hub_and_a_cached_id_wins_over_a_same_named_folder(tmp_path, monkeypatch):
    import huggingface_hub.constants
    import transformers.utils
    asked = []

    def fake_cached_file(name, filename, **kw):
        asked.append(name)
        f = tmp_path / "fake" / "config.json"
        f.parent.mkdir(exist_ok=True)
        f.write_text('{"model_type": "deformable_detr"}')
        return str(f)

    (tmp_path / "work" / "runs").mkdir(parents=True)
    (tmp_path / "work" / "acme").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setattr(transformers.utils, "cached_file", fake_cached_file)
    assert resolve_model("SenseTime/deformable-detr").path is None and asked == ["SenseTime/deformable-detr"]
    hub_cache_with(build_model(tiny_cfg(), LABELS), tmp_path / "hub", "acme/tiny-detr")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert resolve_model("acme/tiny-detr").path is None and asked[-1] == "acme/tiny-detr"  # cached: the hub id


def test_cli_refuses_a_missing_teacher_folder_before_loading_anything(tmp_path):
    from tests.cli_process import cli_in_fresh_process
    (tmp_path / "runs" / "teacher").mkdir(parents=True)
    r = cli_in_fresh_process("distill", "--teacher", "runs/nope", cwd=tmp_path)
    lines = r["err"].strip().splitlines()
    assert r["rc"] == 2 and len(lines) == 1 and "distill.teacher: directory 'runs/nope' does not exist" in lines[0]
    assert "runs/ holds teacher" in lines[0] and r["imported"] == []
