"""Preprocessing travels with the teacher: a teacher whose processor normalises otherwise gets exactly the pixels
its own processor produces for the same resized image."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.config import DistillConfig
from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD, pil_to_tensor
from detrdistill.distillation import Distiller
from detrdistill.distillation.teacher_pixels import PixelNorm, build_teacher_pixels

from .test_distiller import make, model_cfg

STUDENT = PixelNorm(IMAGENET_MEAN, IMAGENET_STD)
pytestmark = pytest.mark.usefixtures("one_thread")


def student_pixels(img: Image.Image) -> torch.Tensor:
    mean, std = torch.tensor(IMAGENET_MEAN).view(3, 1, 1), torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (pil_to_tensor(img) - mean) / std


def image(h=40, w=56, seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kwargs", [dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]),
                                    dict(do_normalize=False)])  # e.g. transformers' RT-DETR processor
def test_teacher_gets_what_its_processor_produces(kwargs):
    from transformers import DeformableDetrImageProcessorPil as Proc
    proc = Proc(do_resize=False, do_pad=False, **kwargs)
    img = image()
    want = torch.as_tensor(np.asarray(proc(images=img, return_tensors="np")["pixel_values"]))[0]
    tp = build_teacher_pixels(proc.to_dict(), STUDENT)
    assert tp is not None
    got = tp(student_pixels(img)[None], torch.ones(1, 40, 56, dtype=torch.long))[0]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_same_normalisation_or_no_processor_changes_nothing():
    assert build_teacher_pixels(None, STUDENT) is None
    same = dict(do_normalize=True, image_mean=list(IMAGENET_MEAN), image_std=list(IMAGENET_STD), do_rescale=True,
                rescale_factor=1 / 255)
    assert build_teacher_pixels(same, STUDENT) is None


def test_padding_stays_zero_and_distiller_feeds_the_teacher_its_view():
    tp = build_teacher_pixels(dict(image_mean=[0.5] * 3, image_std=[0.5] * 3), STUDENT)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 40:] = 0
    x[1, :, :, 40:] = 0
    y = tp(x, mask)
    assert torch.all(y[1, :, :, 40:] == 0) and not torch.allclose(y[0], x[0])
    teacher, student = make(model_cfg(d_model=64), seed=1), make(model_cfg())
    dist = Distiller(teacher, student, DistillConfig(), teacher_pixels=tp)
    plain = Distiller(teacher, student, DistillConfig())
    torch.testing.assert_close(dist.teacher_forward(x, mask).logits, plain.teacher_forward(y, mask).logits)
    assert not torch.allclose(dist.teacher_forward(x, mask).logits, plain.teacher_forward(x, mask).logits)
    assert not any(k.startswith("teacher_pixels") for k in dist.checkpoint_state_dict())


def test_build_distill_task_reads_the_teachers_processor(tmp_path):
    from transformers import DeformableDetrImageProcessorPil as Proc

    from detrdistill.distillation.task import _teacher_pixels
    teacher = make(model_cfg(d_model=64), seed=1)
    teacher.model.save_pretrained(tmp_path / "t")
    assert _teacher_pixels(str(tmp_path / "t")) is None  # no preprocessor_config.json
    Proc(image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5]).save_pretrained(tmp_path / "t")
    tp = _teacher_pixels(str(tmp_path / "t"))
    assert tp is not None and tp.teacher.mean == (0.5, 0.5, 0.5)
