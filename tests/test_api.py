"""The Python API (``from detrdistill import DETRDistiller, DistillConfig``): a light import, both label formats,
the transformers-like output, training on a fixed batch, the saved student, and one code path with the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrdistill import DETRDistiller, DistillConfig, LossConfig, coco_to_labels
from detrdistill.errors import ConfigError, LabelsError
from detrdistill.export.processor import build_image_processor
from tests.test_distiller import make, model_cfg

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")
STUDENT_CLASSES = {0: "cat", 1: "dog", 2: "bird"}
TEACHER_CLASSES = {0: "bird", 1: "horse", 2: "cat", 3: "dog"}  # more classes, other order: mapped by name
CATEGORY_IDS = [7, 3, 11]  # the COCO ids of student labels 0, 1, 2


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("teacher")
    make(model_cfg(d_model=64, queries=15, layers=2, levels=2), TEACHER_CLASSES, seed=1).model.save_pretrained(d)
    build_image_processor("deformable_detr", 64, 96).save_pretrained(d)
    return d


def student(seed=2):
    return make(model_cfg(queries=10, levels=2), STUDENT_CLASSES, seed=seed).model


def pixels(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 48:] = 0  # image 1 is 64 x 48, padded on the right
    return x, mask


# one image of 64 x 64 and one of 64 (h) x 48 (w) px, annotated in COCO form and, by hand, in transformers form
COCO = [[{"bbox": [8, 16, 16, 32], "category_id": 11}, {"bbox": [40, 40, 30, 30], "category_id": 7},
         {"bbox": [0, 0, 64, 64], "category_id": 3, "iscrowd": 1}],
        [{"bbox": [-4, 0, 12, 8], "category_id": 3}]]
SIZES = [(64, 64), (64, 48)]
HF = [{"class_labels": torch.tensor([2, 0]),
       "boxes": torch.tensor([[16 / 64, 32 / 64, 16 / 64, 32 / 64], [52 / 64, 52 / 64, 24 / 64, 24 / 64]])},
      {"class_labels": torch.tensor([1]), "boxes": torch.tensor([[4 / 48, 4 / 64, 8 / 48, 8 / 64]])}]


@pytest.mark.slow  # a fresh interpreter loading torch
def test_import_is_light_and_public_names_load_on_use():
    code = ("import sys, detrdistill; heavy = [m for m in ('torch', 'transformers', 'pydantic') if m in sys.modules]; "
            "from detrdistill import DETRDistiller, DistillConfig, DistillationTrainer; "
            "print(heavy, DETRDistiller.__module__, 'DistillationTrainer' in dir(detrdistill))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split("\n")[0] == "[] detrdistill.distillation.detr_distiller True"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        import detrdistill
        detrdistill.Nope  # noqa: B018


def test_coco_annotations_become_normalised_cxcywh():
    out = coco_to_labels(COCO, SIZES, CATEGORY_IDS)
    for got, want in zip(out, HF):  # crowd dropped, the box over the left edge clipped to the image
        assert torch.equal(got["class_labels"], want["class_labels"])
        torch.testing.assert_close(got["boxes"], want["boxes"])
    assert out[1]["orig_size"].tolist() == [64, 48]
    as_processor_input = [{"image_id": i, "annotations": a} for i, a in enumerate(COCO)]
    assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(coco_to_labels(as_processor_input, SIZES,
                                                                                  CATEGORY_IDS), out))


def test_both_label_formats_give_the_same_losses(teacher_dir):
    torch.manual_seed(0)
    dist = DETRDistiller(str(teacher_dir), student(), DistillConfig(), category_ids=CATEGORY_IDS).train()
    x, mask = pixels()
    a = dist(x, pixel_mask=mask, labels=COCO, image_sizes=SIZES)
    b = dist(x, pixel_mask=mask, labels=HF)
    assert a.losses.keys() == b.losses.keys() and {"cls", "logits_cls", "feature", "query_prior_cls"} <= a.losses.keys()
    for k in a.losses:
        torch.testing.assert_close(a.losses[k], b.losses[k])
    torch.testing.assert_close(sum(a.losses.values()), a.loss.detach())


def test_labels_that_cannot_be_read_are_one_line(teacher_dir):
    dist = DETRDistiller(str(teacher_dir), student(), category_ids=CATEGORY_IDS)
    x, mask = pixels()
    cases = [({"labels": COCO}, "need image_sizes"),
             ({"labels": COCO, "image_sizes": [(64, 64)]}, "one \\(height, width\\) per image"),
             ({"labels": [[{"bbox": [1, 1, 4, 4], "category_id": 5}], []], "image_sizes": SIZES}, "category_id 5"),
             ({"labels": [{"class_labels": [0], "boxes": [[30.0, 20.0, 8.0, 8.0]]}, HF[1]]}, "outside \\[0, 1\\]"),
             ({"labels": [HF[0], COCO[1]], "image_sizes": SIZES}, "mix"),
             ({"labels": HF[:1]}, "1 entries for a batch of 2"),
             ({"labels": [{"class_labels": [3], "boxes": [[0.5, 0.5, 0.1, 0.1]]}, HF[1]]}, "0..2"),
             ({}, "labels are required")]
    for kwargs, message in cases:
        with pytest.raises(LabelsError, match=message) as e:
            dist(x, pixel_mask=mask, **kwargs)
        assert "\n" not in str(e.value)
    plain = DETRDistiller(str(teacher_dir), student())  # no category_ids: COCO ids are label indices
    with pytest.raises(LabelsError, match="pass category_ids"):
        plain(x, pixel_mask=mask, labels=COCO, image_sizes=SIZES)


def test_bad_settings_are_one_line(teacher_dir):
    with pytest.raises(ConfigError, match="config: logits.wieght: unknown key"):
        DETRDistiller(str(teacher_dir), student(), {"logits": {"wieght": 2}})
    with pytest.raises(ConfigError, match="no teacher"):
        DETRDistiller(None, student())
    with pytest.raises(ConfigError, match="teacher: expected a transformers detector"):
        DETRDistiller(3, student())


def test_the_output_reads_like_a_transformers_detector_output(teacher_dir):
    dist = DETRDistiller(str(teacher_dir), student()).eval()
    x, mask = pixels()
    with torch.no_grad():
        out = dist(x, pixel_mask=mask, labels=HF)
        own = dist.student_model(pixel_values=x, pixel_mask=mask)
    torch.testing.assert_close(out.logits, own.logits)
    torch.testing.assert_close(out.pred_boxes, own.pred_boxes)
    processor = build_image_processor("deformable_detr", 64, 96)
    dets = processor.post_process_object_detection(out, threshold=0.0, target_sizes=SIZES)
    assert len(dets) == 2 and dets[0]["boxes"].shape[-1] == 4
    assert out.teacher_outputs.logits.shape[-1] == len(STUDENT_CLASSES)  # teacher classes mapped by name


def test_teacher_stays_frozen_and_out_of_the_optimizer(teacher_dir):
    dist = DETRDistiller(str(teacher_dir), student()).train()
    teacher_ids = {id(p) for p in dist.teacher_model.parameters()}
    params = dist.trainable_parameters()
    assert params and not teacher_ids & {id(p) for p in params}
    assert not dist.teacher_model.training and dist.student_model.training
    assert {id(p) for p in dist.student_model.parameters() if p.requires_grad} <= {id(p) for p in params}
    assert not any(k.startswith("distiller.teacher.") for k in dist.checkpoint_state_dict())


def test_the_loss_decreases_on_a_fixed_batch(teacher_dir):
    torch.manual_seed(0)
    dist = DETRDistiller(str(teacher_dir), student(), DistillConfig(), loss=LossConfig(recipe="set")).train()
    opt = torch.optim.AdamW(dist.trainable_parameters(), lr=2e-3)
    x, mask = pixels()
    losses = []
    for _ in range(12):
        out = dist(x, pixel_mask=mask, labels=HF)
        assert all(math.isfinite(v.item()) for v in out.losses.values())
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_save_student_writes_a_plain_transformers_folder(teacher_dir, tmp_path):
    from transformers import AutoModelForObjectDetection

    processor = build_image_processor("deformable_detr", 64, 96)
    dist = DETRDistiller(str(teacher_dir), student(), student_processor=processor, category_ids=CATEGORY_IDS)
    out = dist.save_student(tmp_path / "student")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= \
        {f.name for f in out.iterdir()}
    loaded = AutoModelForObjectDetection.from_pretrained(out)
    mine = dist.student_model.state_dict()
    assert loaded.state_dict().keys() == mine.keys()
    assert all(torch.equal(v, mine[k]) for k, v in loaded.state_dict().items())
    assert json.loads((out / "config.json").read_text())["dataset_category_ids"] == CATEGORY_IDS
    assert str(teacher_dir) in (out / "README.md").read_text()


def test_the_engine_resolves_the_teacher_once(monkeypatch, synth_dir, teacher_dir, tmp_path):
    """``DistillTask.from_config`` (what ``detrdistill distill`` runs) looks the teacher up once: its weights and its
    processor come from that one resolution."""
    from detrdistill.config import load_config
    from detrdistill.distillation.task import DistillTask
    from detrdistill.models import pretrained
    from tests.conftest import tiny_overrides

    seen = []
    real = pretrained.resolve_model
    monkeypatch.setattr(pretrained, "resolve_model", lambda name, *a, **k: seen.append(str(name)) or real(name, *a, **k))
    cfg = load_config(None, tiny_overrides(tmp_path, synth_dir, f"distill.teacher={teacher_dir}"))
    task = DistillTask.from_config(cfg, STUDENT_CLASSES)
    assert seen == [str(teacher_dir)]
    assert task.distiller.teacher_pixels is not None  # its preprocessor_config.json (96 px long side) was read


@pytest.fixture(scope="module")
def synth_teacher(tmp_path_factory):
    """A teacher of the synthetic classes plus one more, in another order, with a processor normalising its own way
    and resizing larger than the student's data settings (so the run maps classes and builds a teacher view)."""
    from detrdistill.data import SYNTH_CLASSES
    from transformers import DeformableDetrImageProcessorPil

    d = tmp_path_factory.mktemp("synth_teacher")
    classes = dict(enumerate(["boat", *reversed(SYNTH_CLASSES)]))
    make(model_cfg(d_model=64, queries=15, layers=2, levels=2), classes, seed=1).model.save_pretrained(d)
    DeformableDetrImageProcessorPil(size={"shortest_edge": 80, "longest_edge": 96}, image_mean=[0.5, 0.5, 0.5],
                                    image_std=[0.25, 0.25, 0.25]).save_pretrained(d)
    return d


@pytest.mark.parametrize("extra", [
    pytest.param([], id="set-criterion"),
    pytest.param(["model.family=rt_detr", "model.num_feature_levels=3", "distill.contrastive.enabled=true",
                  "distill.contrastive.proj_dim=16"], id="family-recipe"),
])
@pytest.mark.slow  # trains a teacher and distils through the CLI
def test_the_api_and_the_cli_give_the_same_losses(synth_dir, synth_teacher, tmp_path, extra):
    """``detrdistill distill`` for one step logs the losses of its first batch; the API, given the same config,
    seed and batch (a student built by the user's own code, the student's processor as an object) gives the same."""
    from accelerate.utils import set_seed

    from detrdistill.cli import embedded_config, main
    from detrdistill.config import SplitConfig, load_config
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.engine.loading import train_loader
    from detrdistill.engine.metrics import read_metrics
    from detrdistill.models.build import build_model
    from tests.conftest import tiny_overrides

    overrides = tiny_overrides(tmp_path / "run", synth_dir, "train.max_steps=1", "train.eval_every_epochs=0", *extra)
    assert main(["distill", "--teacher", str(synth_teacher), *sum((["--set", o] for o in overrides), [])]) == 0
    logged = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r)

    cfg = load_config(embedded_config("synthetic"), overrides)
    dataset = build_dataset(SplitConfig(ann_file=str(synth_dir / "train.json"), image_dir=str(synth_dir / "images")),
                            cfg.data, train=True)
    set_seed(cfg.train.seed)
    model = build_model(cfg.model, dataset.id2label)
    dist = DETRDistiller(str(synth_teacher), model, cfg.distill, loss=cfg.loss,
                         student_processor=build_image_processor(cfg.model.family, cfg.data.eval_size,
                                                                 cfg.data.max_size)).train()
    loader, _ = train_loader(dataset, collate_fn, cfg.train.batch_size, cfg.train.seed, 0, 1, 0)
    batch = next(iter(loader))
    out = dist(batch["pixel_values"], pixel_mask=batch["pixel_mask"], labels=batch["labels"])
    assert dist.distiller.teacher_pixels is not None and dist.distiller.class_map is not None
    assert {k.removeprefix("loss/") for k in logged if k.startswith("loss/")} == out.losses.keys()
    for k, v in out.losses.items():
        assert logged[f"loss/{k}"] == pytest.approx(v.item(), rel=1e-5, abs=1e-7), k
    assert logged["loss"] == pytest.approx(out.loss.item(), rel=1e-5)


def test_every_public_name_is_documented():
    """docs/api.md names every public name; each has a docstring, and so does every public method and property of
    the two classes users build; the README shows the API."""
    import detrdistill
    from detrdistill import DistillationTrainer

    page = (REPO / "docs" / "api.md").read_text()
    for name in detrdistill.__all__:
        assert f"`{name}`" in page, name
        if name != "__version__":
            assert getattr(detrdistill, name).__doc__, name
    for cls in (DETRDistiller, DistillationTrainer):
        for attr, value in vars(cls).items():
            if not attr.startswith("_") and attr != "extra_repr" and (callable(value) or isinstance(value, property)):
                assert value.__doc__, f"{cls.__name__}.{attr}"
                assert f"`{attr}" in page or attr in ("forward", "compute_loss", "log", "prediction_step"), attr
    readme = (REPO / "README.md").read_text()
    assert "## Python API" in readme and "from detrdistill import DETRDistiller, DistillConfig" in readme
