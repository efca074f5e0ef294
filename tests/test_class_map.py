"""Distil from a teacher whose classes are a superset of the dataset's: teacher scores mapped by class name."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig
from detrdistill.distillation import Distiller
from detrdistill.distillation.class_map import ClassMap, build_class_map
from detrdistill.errors import IncompatibleModelsError
from detrdistill.models.families import get_adapter
from detrdistill.models.label_map import relabel_model
from detrdistill.ops.criterion import SetCriterion

from .test_distiller import ALL_ON, model_cfg, make

COCO_LIKE = {0: "person", 1: "bicycle", 2: "car", 3: "dog", 4: "cat"}
DATASET = {0: "cat", 1: "person", 2: "car"}

pytestmark = pytest.mark.usefixtures("one_thread")


def test_sigmoid_map_selects_and_reorders_columns():
    cmap = build_class_map(COCO_LIKE, DATASET, "sigmoid")
    logits = torch.randn(2, 3, 7, 5)
    assert torch.equal(cmap(logits), logits[..., [4, 0, 2]])
    assert build_class_map(COCO_LIKE, COCO_LIKE, "sigmoid") is None


def test_softmax_map_keeps_class_probabilities_and_no_object_last():
    cmap = build_class_map(COCO_LIKE, DATASET, "softmax")
    logits = torch.randn(2, 3, 7, 6)  # 5 classes + no-object
    p, q = logits.softmax(-1), cmap(logits).softmax(-1)
    assert q.shape[-1] == 4
    torch.testing.assert_close(q[..., :3], p[..., [4, 0, 2]])  # kept classes: exactly the teacher's probabilities
    torch.testing.assert_close(q[..., 3], p[..., [1, 3, 5]].sum(-1))  # no-object absorbs bicycle, dog


def test_a_label_map_with_gaps_maps_by_logit_column():
    """COCO checkpoints name 80 classes with ids up to 90 (91 class columns + no-object): every column the map does
    not keep, named or not, goes to no-object; a map naming ids past the head is refused in one line."""
    coco_gaps = {0: "person", 2: "car", 5: "dog", 7: "cat"}  # ids 1, 3, 4, 6 unnamed; 8 class columns
    cmap = build_class_map(coco_gaps, DATASET, "softmax")
    logits = torch.randn(2, 5, 9)  # 8 classes + no-object
    p, q = logits.softmax(-1), cmap(logits).softmax(-1)
    torch.testing.assert_close(q[..., :3], p[..., [7, 0, 2]])
    torch.testing.assert_close(q[..., 3], p[..., [1, 3, 4, 5, 6, 8]].sum(-1))
    torch.testing.assert_close(q.sum(-1), torch.ones(2, 5))
    with pytest.raises(IncompatibleModelsError, match="names class id 7 but its classification head has 6") as e:
        cmap(torch.randn(2, 5, 7))
    assert "\n" not in str(e.value)


def test_no_common_class_or_missing_classes_are_refused_in_one_line():
    with pytest.raises(IncompatibleModelsError, match="no class in common") as e:
        build_class_map(COCO_LIKE, {0: "circle", 1: "square"}, "sigmoid")
    assert "\n" not in str(e.value)
    with pytest.raises(IncompatibleModelsError, match="lacks 1 of the dataset's 2 classes \\('square'\\)"):
        build_class_map(COCO_LIKE, {0: "cat", 1: "square"}, "sigmoid")


def test_every_term_sees_mapped_teacher_scores():
    """Distilling from a superset teacher equals distilling from the same teacher re-headed to the dataset's classes
    (its class rows selected by name): every term -- logits, feature quality scores, query prior (teacher
    assignment), contrastive, FitNet, logit KD -- gets the same teacher scores."""
    big = make(model_cfg(d_model=64, queries=30, layers=3), id2label=COCO_LIKE, seed=1)
    small = get_adapter(relabel_model(big.model, DATASET)).eval()
    student = make(model_cfg(), id2label=DATASET, seed=2)
    cfg = DistillConfig(**ALL_ON, logits={"variant": "pos_neg"})
    g = torch.Generator().manual_seed(0)
    x, mask = torch.randn(2, 3, 64, 64, generator=g), torch.ones(2, 64, 64, dtype=torch.long)
    targets = [{"class_labels": torch.tensor([0, 2]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2],
                                                                              [0.6, 0.6, 0.3, 0.2]])},
               {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]])}]
    out = {}
    for name, teacher in (("superset", big), ("reheaded", small)):
        torch.manual_seed(3)
        dist = Distiller(teacher, student, cfg, dataset_id2label=DATASET).eval()
        assert (dist.class_map is None) == (name == "reheaded")
        out[name] = dist(x, mask, targets, SetCriterion(len(DATASET)))
    a, b = out["superset"], out["reheaded"]
    assert a.teacher.logits.shape[-1] == len(DATASET)
    torch.testing.assert_close(a.teacher.logits, b.teacher.logits)
    assert set(a.loss_dict) == set(b.loss_dict) and {"feature", "query_prior_cls", "logit_kd"} <= set(a.loss_dict)
    for k in a.loss_dict:
        torch.testing.assert_close(a.loss_dict[k], b.loss_dict[k], msg=k)
    assert torch.equal(a.teacher.assignments, b.teacher.assignments)


def test_class_map_is_not_checkpointed():
    cmap = ClassMap([1, 0], softmax=False)
    assert dict(cmap.state_dict()) == {}


def test_the_mapping_is_logged_in_one_line(caplog):
    import logging
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        build_class_map(COCO_LIKE, DATASET, "softmax")
        build_class_map(COCO_LIKE, COCO_LIKE, "sigmoid")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("distill.teacher classes")]
    assert len(lines) == 2 and all("\n" not in m for m in lines)
    mapped, same = lines
    assert "by name: kept 3 ['cat' 4->0, 'person' 0->1, 'car' 2->2]" in mapped
    assert "dropped 2 teacher classes ('bicycle', 'dog')" in mapped and "no-object" in mapped
    assert same.startswith("distill.teacher classes: the dataset's 5, same ids")
