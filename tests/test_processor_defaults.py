"""A teacher's or checkpoint's preprocessing is read as transformers reads it: a setting the
``preprocessor_config.json`` leaves out comes from the processor class it names (an RT-DETR processor without
``do_normalize`` feeds [0, 1] pixels); a folder teacher without the file, and a checkpoint fine-tuned on pixels
normalised otherwise than it was trained on, are each said in one warning."""
from __future__ import annotations

import json
import logging

import numpy as np
import torch
from PIL import Image

from detrdistill import DETRDistiller, DistillConfig
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pil_to_tensor
from detrdistill.distillation.teacher_pixels import build_teacher_pixels
from detrdistill.models.pixel_norm import PixelNorm, warn_pretrained_pixels, with_class_defaults
from detrdistill.models.build import build_model
from tests.test_distiller import ID2LABEL, make, model_cfg
from tests.test_teacher_pixels import STUDENT

RTDETR_FILE = {"image_processor_type": "RTDetrImageProcessor", "size": {"height": 640, "width": 640}}


def test_missing_settings_come_from_the_named_processor_class():
    filled = with_class_defaults(RTDETR_FILE)
    assert filled["do_normalize"] is False and filled["size"] == {"height": 640, "width": 640}  # the file's own kept
    assert with_class_defaults({"image_mean": [0.5] * 3}) == {"image_mean": [0.5] * 3}  # no class named: as it is
    assert PixelNorm.from_processor_config(filled) == PixelNorm((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), 1.0)


def test_an_rt_detr_teacher_file_without_do_normalize_gets_zero_to_one_pixels():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8))
    raw = pil_to_tensor(img)[None]
    student = (raw - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    view = build_teacher_pixels(RTDETR_FILE, STUDENT, mode="auto")(student)
    torch.testing.assert_close(view.pixel_values, raw, atol=1e-5, rtol=0)


def test_a_folder_teacher_without_a_processor_file_is_one_warning(tmp_path, caplog):
    make(model_cfg(d_model=64, queries=15, layers=2, levels=2), seed=1).model.save_pretrained(tmp_path / "t")
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        DETRDistiller(str(tmp_path / "t"), make(model_cfg()).model, DistillConfig())
    said = [r.getMessage() for r in caplog.records if "no preprocessor_config.json" in r.getMessage()]
    assert len(said) == 1 and str(tmp_path / "t") in said[0] and "teacher_processor=" in said[0]


def test_fine_tuning_a_checkpoint_trained_on_other_pixels_is_one_warning(tmp_path, caplog):
    folder = tmp_path / "ckpt"
    make(model_cfg()).model.save_pretrained(folder)
    assert not warn_pretrained_pixels(str(folder))  # no processor file: nothing to compare
    (folder / "preprocessor_config.json").write_text(json.dumps(RTDETR_FILE))
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        assert warn_pretrained_pixels(str(folder))
    assert "mean [0.0, 0.0, 0.0], std [1.0, 1.0, 1.0]" in caplog.text and "ImageNet" in caplog.text
    ours = {"image_processor_type": "DeformableDetrImageProcessor", "image_mean": list(IMAGENET_MEAN),
            "image_std": list(IMAGENET_STD)}
    (folder / "preprocessor_config.json").write_text(json.dumps(ours))
    assert not warn_pretrained_pixels(str(folder)) and not warn_pretrained_pixels(None)
    # building a model to fine-tune from that checkpoint says it, once, with the checkpoint named
    (folder / "preprocessor_config.json").write_text(json.dumps(RTDETR_FILE))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        build_model(model_cfg().model_copy(update={"pretrained": str(folder)}), ID2LABEL)
    said = [r.getMessage() for r in caplog.records if "was trained on pixels normalised" in r.getMessage()]
    assert len(said) == 1 and str(folder) in said[0]
