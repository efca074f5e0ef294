"""The examples run as a user runs them (a few steps, tiny models saved by the test, the synthetic COCO set): the
transformers Trainer recipe with DistillationTrainer and the plain accelerate loop. Every term is logged and
finite, the logged terms are the whole loss, and the saved student is a plain transformers model whose detections
are those of ``detrdistill predict``."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrdistill.data import SYNTH_CLASSES
from detrdistill.export.processor import build_image_processor
from tests.test_deploy_families import assert_same_detections, from_records, top_k_with_gap
from tests.test_distiller import make, model_cfg

pytestmark = pytest.mark.slow  # runs the examples end to end

REPO = Path(__file__).resolve().parents[1]
TERMS = {"cls", "bbox", "giou", "logits_cls", "logits_bbox", "logits_giou", "feature", "query_prior_cls",
         "query_prior_bbox", "query_prior_giou"}
DATASET_IDS = list(range(1, len(SYNTH_CLASSES) + 1))  # the synthetic set's COCO category ids


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A student folder to start from (random weights, the synthetic classes, an image processor) and a teacher
    folder (wider, its classes in another order): what a user downloads, built from config here."""
    root = tmp_path_factory.mktemp("example_models")
    classes = dict(enumerate(SYNTH_CLASSES))
    make(model_cfg(queries=10, levels=2), classes, seed=2).model.save_pretrained(root / "student")
    make(model_cfg(d_model=64, queries=15, levels=2), dict(enumerate(reversed(SYNTH_CLASSES))),
         seed=1).model.save_pretrained(root / "teacher")
    for name in ("student", "teacher"):
        build_image_processor("deformable_detr", 64, 64).save_pretrained(root / name)
    return root


def run_example(script: str, *args) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / script), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def assert_predict_matches_transformers(model_dir: Path, images: list[Path], out: Path) -> list[dict]:
    """``detrdistill predict`` on the folder and transformers alone (AutoModelForObjectDetection + the saved
    processor's post-processing) find the same detections; returns predict's records."""
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForObjectDetection

    from detrdistill.cli import main

    assert main(["predict", str(model_dir), *map(str, images), "--out", str(out), "--threshold", "0"]) == 0
    records = json.loads((out / "predictions.json").read_text())
    model = AutoModelForObjectDetection.from_pretrained(model_dir).eval()
    processor = AutoImageProcessor.from_pretrained(model_dir)
    for image_id, path in enumerate(images, start=1):
        image = Image.open(path).convert("RGB")
        with torch.no_grad():
            outputs = model(**processor(images=image, return_tensors="pt"))
        found = processor.post_process_object_detection(outputs, threshold=0.0,
                                                        target_sizes=[(image.height, image.width)])[0]
        theirs = [{"label": model.config.id2label[int(k)], "score": float(s), "box": b.tolist()}
                  for s, k, b in zip(found["scores"], found["labels"], found["boxes"])]
        ours = from_records(records, image_id)
        k = top_k_with_gap([d["score"] for d in ours], at_most=min(len(theirs), 20))
        assert k >= 5
        assert_same_detections(sorted(ours, key=lambda d: -d["score"])[:k],
                               sorted(theirs, key=lambda d: -d["score"])[:k], score_tol=2e-5, box_tol=0.02)
    return records


def test_trainer_recipe(synth_dir, models, tmp_path):
    out = tmp_path / "out"
    proc = run_example("trainer_recipe.py", "--ann", synth_dir / "train.json", "--images", synth_dir / "images",
                       "--val-ann", synth_dir / "val.json", "--student", models / "student", "--teacher",
                       models / "teacher", "--output-dir", out, "--image-size", 64, "--max-steps", 4,
                       "--batch-size", 2, "--grad-accum", 2, "--logging-steps", 1, "--save-steps", 4, "--cpu")
    history = json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"]
    train_logs = [r for r in history if "loss" in r]
    assert [r["step"] for r in train_logs] == [1, 2, 3, 4]
    for r in train_logs:  # every term, through the Trainer's own logging; together they are its loss
        terms = {k.removeprefix("loss/"): v for k, v in r.items() if k.startswith("loss/")}
        assert terms.keys() == TERMS and all(math.isfinite(v) for v in terms.values())
        assert sum(terms.values()) == pytest.approx(r["loss"], rel=1e-5)
    evaluation = json.loads(proc.stdout.strip().splitlines()[-1])
    assert math.isfinite(evaluation["eval_loss"])

    student = out / "student"
    assert not (student / "distillation_state.pt").exists() and (out / "checkpoint-4" / "distillation_state.pt").exists()
    images = sorted((synth_dir / "images").glob("*.png"))[:2]
    records = assert_predict_matches_transformers(student, images, tmp_path / "pred")
    assert {r["category_id"] for r in records} <= set(DATASET_IDS)  # recorded by category_ids=


def test_plain_loop(synth_dir, models, tmp_path):
    from transformers import AutoModelForObjectDetection

    out = tmp_path / "student"
    proc = run_example("plain_loop.py", "--ann", synth_dir / "train.json", "--images", synth_dir / "images",
                       "--student", models / "student", "--teacher", models / "teacher", "--output-dir", out,
                       "--image-size", 64, "--steps", 3, "--batch-size", 4)
    steps = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [s["step"] for s in steps] == [1, 2, 3]
    for s in steps:
        terms = {k: v for k, v in s.items() if k not in ("step", "loss")}
        assert terms.keys() == TERMS and all(math.isfinite(v) for v in terms.values())
        assert sum(terms.values()) == pytest.approx(s["loss"], rel=1e-5)
    saved = AutoModelForObjectDetection.from_pretrained(out)
    start = AutoModelForObjectDetection.from_pretrained(models / "student")
    assert any(not torch.equal(a, b) for a, b in zip(saved.state_dict().values(), start.state_dict().values()))
    assert json.loads((out / "config.json").read_text())["dataset_category_ids"] == DATASET_IDS
