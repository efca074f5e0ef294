"""Every registered family is deployable from its exported model folder: ``transformers.pipeline`` and
``detrdistill predict`` on the folder and on its ``.onnx`` export give the same detections; families whose classes
are the project's own register with transformers through their explicit call, with no remote code."""
from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from detrdistill.config import Config
from detrdistill.export import finish_model_dir
from detrdistill.export.model_card import write_model_card
from detrdistill.models.families import all_specs, family_spec
from detrdistill.predict import predict
from tests.registry_models import (DATA, ID2LABEL, export_size, family_params, register_auto_classes,
                                   tiny_family_cfg, tiny_family_model)
from tests.test_export import random_image

# slow: every family: pipeline, predict and ONNX export; fresh interpreters
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
CATEGORY_IDS = [5, 9, 2]   # the "dataset's" ids of labels 0, 1, 2
SHAPES = [(90, 130), (120, 80)]


def saved_model_dir(family: str, tmp_path):
    """A model folder as training exports it: weights, image processor, category ids and model card."""
    model = tiny_family_model(family)
    model_dir = tmp_path / "model"
    model.save_pretrained(str(model_dir))
    cfg = Config(data=DATA, model=tiny_family_cfg(family))
    finish_model_dir(model_dir, cfg, model.config, category_ids=CATEGORY_IDS)
    write_model_card(cfg, model_dir, None)
    return model_dir


def image_files(tmp_path) -> list:
    files = []
    for i, hw in enumerate(SHAPES):
        files.append(tmp_path / f"img{i}.png")
        random_image(*hw, seed=i + 1).save(files[-1])
    return files


def top_k_with_gap(scores: list[float], at_most: int) -> int:
    """The largest k <= ``at_most`` with a gap between the k-th and (k+1)-th score larger than the
    pipeline-vs-predict difference (scores are saved to 1e-5), so both keep the same top k."""
    s = sorted(scores, reverse=True)
    if at_most >= len(s):
        return len(s)
    for k in range(at_most, 0, -1):
        if s[k - 1] - s[k] > 5e-5:
            return k
    raise AssertionError(f"no clean cut among the top {at_most} scores {s[:at_most + 1]}")


def assert_same_detections(ours: list[dict], theirs: list[dict], score_tol: float, box_tol: float) -> None:
    """One-to-one (optimal assignment; queries may tie in score): each of ``ours`` has a detection in ``theirs`` of
    the same class, score and box."""
    from scipy.optimize import linear_sum_assignment

    assert len(ours) == len(theirs), (len(ours), len(theirs))
    cost = np.full((len(ours), len(theirs)), 1e6)
    for i, d in enumerate(ours):
        for j, t in enumerate(theirs):
            if t["label"] == d["label"] and abs(t["score"] - d["score"]) <= score_tol:
                cost[i, j] = np.abs(np.subtract(t["box"], d["box"])).max()
    misfit = (cost > box_tol).astype(float)  # a perfect matching within the tolerances must exist
    rows, cols = linear_sum_assignment(misfit)
    bad = [(ours[i], theirs[j]) for i, j in zip(rows, cols) if misfit[i, j]]
    assert not bad, bad[:3]


def from_records(records: list[dict], image_id: int) -> list[dict]:
    return [{"label": r["category_name"], "score": r["score"],
             "box": [r["bbox"][0], r["bbox"][1], r["bbox"][0] + r["bbox"][2], r["bbox"][1] + r["bbox"][3]]}
            for r in records if r["image_id"] == image_id]


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def _share(processor, path) -> list[float]:
    """(width, height) share of the processor's padded input that the image's resized pixels fill."""
    from PIL import Image

    mask = processor(images=Image.open(path).convert("RGB"), return_tensors="pt")["pixel_mask"][0]
    return [float(mask.any(0).float().mean()), float(mask.any(1).float().mean())]


@pytest.mark.parametrize("family", family_params())
def test_pipeline_predict_and_onnx_give_the_same_detections(family, tmp_path):
    from transformers import pipeline

    from detrdistill.export.onnx_export import export_model_dir

    model_dir = saved_model_dir(family, tmp_path)
    files = image_files(tmp_path)
    torch_run = predict(model_dir, files, tmp_path / "pt", threshold=0.0, progress=False)
    records = json.loads(torch_run.predictions_file.read_text())
    assert {r["category_id"] for r in records} <= set(CATEGORY_IDS)  # the recorded dataset ids, not label indices
    assert all(r["category_id"] == CATEGORY_IDS[[*ID2LABEL.values()].index(r["category_name"])] for r in records)

    register_auto_classes(family)  # what the model card tells a user of this family to call (if anything)
    caught = _Collect()
    logging.getLogger("transformers").addHandler(caught)
    try:
        detector = pipeline("object-detection", model=str(model_dir), device="cpu", trust_remote_code=False)
    finally:
        logging.getLogger("transformers").removeHandler(caught)
    assert not [m for m in caught.messages if "not supported" in m], caught.messages

    onnx_records = None
    if not family_spec(family).onnx_unsupported:
        export_model_dir(model_dir, tmp_path / "m.onnx", *export_size(family), check=False)
        onnx_run = predict(tmp_path / "m.onnx", files, tmp_path / "ox", threshold=0.0, progress=False)
        onnx_records = json.loads(onnx_run.predictions_file.read_text())
    blind = "pixel_mask" not in family_spec(family).capabilities
    for image_id, path in enumerate(files, start=1):
        ours = from_records(records, image_id)
        if blind:  # fractions of the padded square times the image's size (docs/onnx.md): ours times its share
            ours = [{**d, "box": [v * s for v, s in zip(d["box"], _share(detector.image_processor, path) * 2)]}
                    for d in ours]
        theirs = detector(str(path), threshold=0.0)  # RT-DETR's transformers post-processing keeps num_queries
        k = top_k_with_gap([d["score"] for d in ours], at_most=len(theirs))
        top = sorted(ours, key=lambda d: -d["score"])[:k]
        theirs = sorted(theirs, key=lambda d: -d["score"])[:k]
        theirs = [{"label": d["label"], "score": d["score"],
                   "box": [d["box"][c] for c in ("xmin", "ymin", "xmax", "ymax")]} for d in theirs]
        assert_same_detections(top, theirs, score_tol=2e-5, box_tol=1.02)  # the pipeline truncates to int px
        if onnx_records is not None:  # all of them: same pre- and post-processing, so the same top-k
            assert_same_detections(from_records(records, image_id), from_records(onnx_records, image_id),
                                   score_tol=1e-3, box_tol=0.05)
    if onnx_records is not None:
        assert sorted((r["image_id"], r["category_id"]) for r in onnx_records) == \
            sorted((r["image_id"], r["category_id"]) for r in records)


@pytest.mark.parametrize("family", family_params())
def test_pipeline_matches_the_project_evaluation_path(family, tmp_path):
    """``pipeline`` on the exported folder vs the project's eval path (eval transforms -> collate -> adapter ->
    ``postprocess``). A square-padding family gets an image resized to exactly its square (the eval collate pads
    to the batch, its processor to the square; the model ignores the mask, so only then are the pixels equal)."""
    from transformers import pipeline

    from detrdistill.config import DataConfig
    from detrdistill.models.families import get_adapter
    from tests.test_export import project_detections

    square = "square_padding" in family_spec(family).capabilities
    data_cfg = DataConfig(eval_size=96, max_size=96) if square else DataConfig(eval_size=64, max_size=128)
    model = tiny_family_model(family)
    model.save_pretrained(str(tmp_path))
    finish_model_dir(tmp_path, Config(data=data_cfg, model=tiny_family_cfg(family)), model.config)
    img = random_image(*((150, 150) if square else (100, 150)), seed=1)  # resized 96x96 / 64x96: no padding
    ours = project_detections(get_adapter(model), img, data_cfg)
    ours = [{"label": ID2LABEL[int(k)], "score": float(s), "box": b.tolist()}
            for s, k, b in zip(ours["scores"], ours["labels"], ours["boxes"])]
    register_auto_classes(family)
    theirs = pipeline("object-detection", model=str(tmp_path), device="cpu")(img, threshold=0.0)
    k = top_k_with_gap([d["score"] for d in ours], at_most=len(theirs))
    theirs = [{"label": d["label"], "score": d["score"], "box": [d["box"][c] for c in ("xmin", "ymin", "xmax", "ymax")]}
              for d in sorted(theirs, key=lambda d: -d["score"])[:k]]
    assert_same_detections(sorted(ours, key=lambda d: -d["score"])[:k], theirs, score_tol=1e-5, box_tol=1.02)


AUTO_FAMILIES = [pytest.param(s.name, id=s.name) for s in all_specs() if s.auto_classes is not None]

_PIPELINE_SCRIPT = """
import json, logging, sys
from transformers import AutoConfig, pipeline
from detrdistill.models.families import family_names, family_spec
family_names()  # the whole registry imported: registers nothing with transformers by itself
folder, family = sys.argv[1], sys.argv[2]
try:
    AutoConfig.from_pretrained(folder)
    before = "loaded"
except (ValueError, KeyError) as e:
    before = "refused"
messages = []
class Collect(logging.Handler):
    def emit(self, record):
        messages.append(record.getMessage())
logging.getLogger("transformers").addHandler(Collect())
fn = family_spec(family).auto_classes
getattr(__import__(fn.__module__, fromlist=[fn.__name__]), fn.__name__)()   # the documented call
detector = pipeline("object-detection", model=folder, device="cpu", trust_remote_code=False)
found = detector(sys.argv[3], threshold=0.0)
print(json.dumps({"before": before, "messages": messages, "n": len(found), "model": type(detector.model).__module__}))
"""


@pytest.mark.parametrize("family", AUTO_FAMILIES)
def test_explicit_registration_makes_the_pipeline_work_without_remote_code(family, tmp_path):
    """In a fresh interpreter: the folder is unknown to transformers until the family's documented registration
    call; after it the pipeline loads the project's classes (no code in the folder, no trust_remote_code) and logs
    no "not supported"."""
    model_dir = saved_model_dir(family, tmp_path)
    assert not list(model_dir.glob("*.py")) and "auto_map" not in json.loads((model_dir / "config.json").read_text())
    fn = family_spec(family).auto_classes
    assert f"from {fn.__module__} import {fn.__name__}" in (model_dir / "README.md").read_text()  # the model card
    files = image_files(tmp_path)
    proc = subprocess.run([sys.executable, "-c", _PIPELINE_SCRIPT, str(model_dir), family, str(files[0])],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["before"] == "refused"
    assert not [m for m in out["messages"] if "not supported" in m], out["messages"]
    assert "not supported" not in proc.stderr
    assert out["n"] > 0 and out["model"].startswith("detrdistill.")
