"""Labels from a transformers image processor that pads: their boxes are fractions of the PADDED canvas (the
label's ``size``), the project's targets fractions of each image's real pixels. The Python API takes them to the
real frame once, so they give the losses the same image's COCO labels give, and gives the plain student (the
evaluation path) its labels in the frame it predicts in: padded for a model that never reads the mask (D-FINE),
real for one that does (Deformable DETR)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill import DETRDistiller, DistillConfig
from detrdistill.data.labels import coco_to_labels, to_targets
from detrdistill.models.adapters.base import padded_targets_to_real_frame
from detrdistill.models.build import build_model
from tests.registry_models import tiny_family_cfg
from tests import test_api
from tests.test_api import CATEGORY_IDS, STUDENT_CLASSES, student

teacher_dir = test_api.teacher_dir  # the API tests' teacher folder (a fixture, used by name)

# a wide and a tall image, one box each, in COCO pixels (category 11 = student label 2, "bird")
IMAGES = [np.zeros((48, 96, 3), np.uint8), np.zeros((96, 48, 3), np.uint8)]
COCO = [[{"bbox": [24, 12, 48, 24], "category_id": 11, "area": 1, "iscrowd": 0}],
        [{"bbox": [6, 30, 24, 36], "category_id": 7, "area": 1, "iscrowd": 0}]]
SIZES = [(48, 96), (96, 48)]


@pytest.fixture(scope="module")
def processed():
    from transformers import DeformableDetrImageProcessorPil

    proc = DeformableDetrImageProcessorPil(size={"shortest_edge": 48, "longest_edge": 96}, do_normalize=True)
    enc = proc(images=[Image.fromarray(a) for a in IMAGES],
               annotations=[{"image_id": i, "annotations": [{**a, "category_id": CATEGORY_IDS.index(a["category_id"])}
                                                            for a in anns]} for i, anns in enumerate(COCO)],
               return_tensors="pt")
    assert tuple(enc["pixel_values"].shape[-2:]) == (96, 96) and enc["labels"][0]["size"].tolist() == [96, 96]
    return enc


def test_a_padding_processors_boxes_are_taken_to_the_real_frame(processed):
    real = coco_to_labels(COCO, SIZES, CATEGORY_IDS)
    padded = [t["boxes"] for t in processed["labels"]]
    assert not torch.allclose(padded[0], real[0]["boxes"])  # the processor's frame is not the project's
    mask = processed["pixel_mask"]

    def to_real(labels):
        return padded_targets_to_real_frame(to_targets(labels), mask)

    got = to_real(processed["labels"])
    for g, r in zip(got, real):
        torch.testing.assert_close(g["boxes"], r["boxes"])
    assert [g["size"].tolist() for g in got] == [[48, 96], [96, 48]]
    again = to_real(got)  # size is now the real one
    assert all(torch.equal(a["boxes"], g["boxes"]) for a, g in zip(again, got))
    # a label without `size`, or one whose size is not the input's, is taken as real-frame already
    plain = [{k: v for k, v in t.items() if k != "size"} for t in processed["labels"]]
    assert all(torch.equal(a["boxes"], b) for a, b in zip(to_real(plain), padded))
    other = [{**t, "size": torch.tensor([128, 96])} for t in processed["labels"]]
    assert all(torch.equal(a["boxes"], b) for a, b in zip(to_real(other), padded))


@pytest.mark.parametrize("family", ["d_fine", "deformable_detr"])
def test_processor_and_coco_labels_give_the_same_losses_and_the_plain_model_its_own_frame(
        family, processed, teacher_dir):
    torch.manual_seed(0)
    model = build_model(tiny_family_cfg(family), STUDENT_CLASSES) if family != "deformable_detr" else student()
    dist = DETRDistiller(str(teacher_dir), model, DistillConfig(), category_ids=CATEGORY_IDS).eval()
    x, mask = processed["pixel_values"], processed["pixel_mask"]
    with torch.no_grad():
        a = dist(x, pixel_mask=mask, labels=COCO, image_sizes=SIZES)
        b = dist(x, pixel_mask=mask, labels=processed["labels"])
    for k in a.losses:
        torch.testing.assert_close(a.losses[k], b.losses[k], msg=k)
    model_frame = dist.model_labels(processed["labels"], x, mask)
    want = [t["boxes"] for t in processed["labels"]] if family == "d_fine" else \
        [t["boxes"] for t in coco_to_labels(COCO, SIZES, CATEGORY_IDS)]
    for got, w in zip(model_frame, want):
        torch.testing.assert_close(got["boxes"], w)
    with torch.no_grad():
        own = dist.student_forward(x, mask, labels=COCO, image_sizes=SIZES).loss
        from_processor = dist.student_forward(x, mask, labels=processed["labels"]).loss
    torch.testing.assert_close(own, from_processor)
