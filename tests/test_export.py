"""Exported model directories work with transformers alone: image processor + model card.

The pipeline of every family against the project's evaluation path and against ``predict``:
tests/test_deploy_families.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.config import BackboneConfig, Config, DataConfig, ModelConfig
from detrdistill.data import collate_fn
from detrdistill.data.transforms import build_transforms
from detrdistill.engine.evaluator import postprocess
from detrdistill.distillation.task import DistillTask
from detrdistill.engine.tasks import DetectionTask
from detrdistill.export import finish_model_dir
from detrdistill.export.model_card import write_model_card
from detrdistill.export.processor import build_image_processor
from detrdistill.models.families import family_names, family_spec
from detrdistill.models.build import build_model

pytestmark = pytest.mark.usefixtures("one_thread")
ID2LABEL = {0: "circle", 1: "square", 2: "triangle"}


def tiny_model_cfg(family: str) -> ModelConfig:
    return ModelConfig(family=family, num_queries=20, d_model=32, encoder_layers=1, decoder_layers=2, ffn_dim=64,
                       num_heads=4, num_feature_levels=2 if family == "deformable_detr" else 4,
                       backbone=BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]))


def random_image(h: int, w: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.uint8) + rng.integers(0, 255, (1, 1, 3), dtype=np.uint8)
    img[h // 4: h // 2, w // 5: w // 2] = rng.integers(0, 255, 3, dtype=np.uint8)  # a block: some structure
    img = np.clip(img.astype(int) + rng.integers(-30, 30, img.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(img)


def project_detections(adapter, img: Image.Image, data_cfg: DataConfig) -> dict:
    """The project's evaluation path on one image (as engine.evaluator.evaluate does it)."""
    empty = {"boxes": torch.zeros(0, 4), "class_labels": torch.zeros(0, dtype=torch.long),
             "orig_size": torch.tensor([img.height, img.width])}
    batch = collate_fn([build_transforms(data_cfg, train=False)(img, empty)])
    with torch.no_grad():
        out = adapter(batch["pixel_values"], batch["pixel_mask"])
    sizes = torch.stack([t["orig_size"] for t in batch["labels"]])
    return postprocess(out.logits[-1], out.boxes[-1], sizes, out.class_activation)[0]


@pytest.mark.parametrize("family", sorted(family_names()))
def test_processor_pixels_equal_eval_transforms(family):
    data_cfg = DataConfig(eval_size=64, max_size=128)
    img = random_image(90, 130)
    ours, _ = build_transforms(data_cfg, train=False)(img, {"boxes": torch.zeros(0, 4),
                                                            "class_labels": torch.zeros(0, dtype=torch.long)})
    proc = build_image_processor(family, data_cfg.eval_size, data_cfg.max_size)
    theirs = proc(images=img, return_tensors="pt")
    h, w = ours.shape[-2:]
    assert (h, w) == (64, 92)
    torch.testing.assert_close(theirs["pixel_values"][0, :, :h, :w], ours, atol=1e-5, rtol=0)
    if "square_padding" in family_spec(family).capabilities:  # one fixed square, a multiple of size_multiple
        assert tuple(theirs["pixel_values"].shape[-2:]) == (128, 128)
        assert float(theirs["pixel_values"][0, :, h:, :].abs().sum()) == 0.0
    else:  # one image: no padding
        assert tuple(theirs["pixel_values"].shape[-2:]) == (h, w)


def test_model_card_names_data_stats_and_teacher(tmp_path):
    cfg = Config(model=tiny_model_cfg("deformable_detr"))
    cfg.distill.teacher = "runs/teacher/model"
    model = build_model(cfg.model, ID2LABEL)
    model.save_pretrained(str(tmp_path))
    finish_model_dir(tmp_path, cfg, model.config)
    write_model_card(cfg, tmp_path, {"AP": 12.345, "AP50": 30.0, "AR100": 40.0}, DistillTask.inputs(cfg))
    card = (tmp_path / "README.md").read_text()
    assert "runs/teacher/model" in card and "circle, square, triangle" in card
    assert "| 12.3 | 30.0 | n/a | n/a | n/a | n/a | 40.0 |" in card  # a stat COCO left undefined reads n/a, not 0
    assert "(distilled from a teacher)" in card and "## Teacher" in card
    from safetensors.torch import load_file
    n_values = sum(t.numel() for t in load_file(str(tmp_path / "model.safetensors")).values())
    assert f"{n_values:,} values" in card
    assert (tmp_path / "preprocessor_config.json").is_file()
    write_model_card(Config(model=tiny_model_cfg("deformable_detr")), tmp_path, None, DetectionTask.inputs(cfg))
    card = (tmp_path / "README.md").read_text()
    assert "Teacher" not in card and "(trained alone)" in card and "not evaluated" in card


@pytest.mark.slow  # trains through the CLI
def test_a_training_run_exports_a_pipeline_ready_model_dir(synth_dir, tmp_path):
    import json

    from transformers import pipeline

    from detrdistill.cli import main
    from tests.conftest import tiny_overrides

    out = tmp_path / "run"
    overrides = tiny_overrides(out, synth_dir, "train.max_steps=2", "train.eval_every_epochs=0")
    assert main(["train", *sum((["--set", o] for o in overrides), [])]) == 0
    model_dir = out / "model"
    ev = json.loads((out / "eval.json").read_text())
    card = (model_dir / "README.md").read_text()
    assert f"{ev['AP']:.1f}" in card and "synthetic" in card
    assert set(ev["per_class_AP"]) <= set(json.loads((model_dir / "config.json").read_text())["id2label"].values())
    detections = pipeline("object-detection", model=str(model_dir), device="cpu")(random_image(64, 64), threshold=0.0)
    assert detections and {"score", "label", "box"} <= set(detections[0])
