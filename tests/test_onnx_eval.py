"""A trained run's model folder records the dataset's category ids; its ``.onnx`` export carries them, and
``detrdistill eval --model model.onnx`` scores it with the same pre- and post-processing as the PyTorch model
(the resize read from the file's metadata)."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")

from detrdistill.cli import main  # noqa: E402
from detrdistill.engine.evaluator import STAT_KEYS  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402

# slow: trains through the CLI, exports and evaluates ONNX
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="module")
def trained(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx_eval") / "run"
    overrides = tiny_overrides(out, synth_dir, "train.max_steps=3", "train.eval_every_epochs=0")
    assert main(["train", *_sets(overrides)]) == 0
    onnx_file = out / "model.onnx"
    assert main(["export", str(out / "model"), "--out", str(onnx_file), "--height", "64", "--width", "64"]) == 0
    return out, overrides, onnx_file


def test_training_records_the_datasets_category_ids_and_the_export_carries_them(trained, synth_dir):
    from detrdistill.export.onnx_metadata import read_metadata

    out, _, onnx_file = trained
    config = json.loads((out / "model" / "config.json").read_text())
    cats = sorted(json.loads((synth_dir / "train.json").read_text())["categories"], key=lambda c: c["id"])
    assert config["dataset_category_ids"] == [c["id"] for c in cats]
    assert [config["id2label"][str(i)] for i in range(len(cats))] == [c["name"] for c in cats]
    info = read_metadata(onnx_file)
    assert info.category_ids == {i: c["id"] for i, c in enumerate(cats)}
    assert info.id2label == {i: c["name"] for i, c in enumerate(cats)}


def test_onnx_adapter_reproduces_the_model_on_eval_batches(trained):
    from detrdistill.config import load_config
    from detrdistill.data import collate_fn
    from detrdistill.engine.evaluator import postprocess
    from detrdistill.engine.loading import eval_loader
    from detrdistill.engine.setup import build_datasets, make_accelerator
    from detrdistill.export.onnx_runtime import OnnxAdapter, OnnxDetector
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import load_detector

    out, overrides, onnx_file = trained
    cfg = load_config(None, overrides)
    _, ds = build_datasets(cfg, make_accelerator(cfg), need_train=False)
    torch_adapter = get_adapter(load_detector(out / "model")).eval()
    onnx_adapter = OnnxAdapter(OnnxDetector(onnx_file))
    for batch in eval_loader(ds, collate_fn, 2, 0, 1, 0):
        with torch.no_grad():
            ref = torch_adapter(batch["pixel_values"], batch["pixel_mask"])
        got = onnx_adapter(batch["pixel_values"], batch["pixel_mask"])
        assert (got.logits[-1] - ref.logits[-1]).abs().max() < 1e-3
        assert (got.boxes[-1] - ref.boxes[-1]).abs().max() < 1e-3
        sizes = torch.stack([t["orig_size"] for t in batch["labels"]])
        for a, b in zip(postprocess(got.logits[-1], got.boxes[-1], sizes, got.class_activation),
                        postprocess(ref.logits[-1], ref.boxes[-1], sizes, ref.class_activation)):
            assert torch.equal(a["labels"], b["labels"]) and (a["scores"] - b["scores"]).abs().max() < 1e-3


def _own_detections_as_val_split(model_dir, synth_dir, tmp_path) -> str:
    """The synthetic val images with the model's own top-3 detections as ground truth (under the dataset's ids,
    which predict writes for a trained run): a split on which the model scores far above 0, so the comparison
    below compares numbers that depend on the detections."""
    from detrdistill.predict import predict

    val = json.loads((synth_dir / "val.json").read_text())
    files = [synth_dir / "images" / im["file_name"] for im in val["images"]]
    records = json.loads(predict(model_dir, files, tmp_path / "pred", threshold=0.0,
                                 progress=False).predictions_file.read_text())
    anns = []
    for k, im in enumerate(val["images"], start=1):
        for r in sorted((r for r in records if r["image_id"] == k), key=lambda r: -r["score"])[:3]:
            anns.append({"id": len(anns) + 1, "image_id": im["id"], "category_id": r["category_id"],
                         "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0})
    gt = tmp_path / "val_own.json"
    gt.write_text(json.dumps({**val, "annotations": anns}))
    return f"data.val={{ann_file: {gt}, image_dir: {synth_dir / 'images'}}}"


def test_eval_of_the_onnx_file_equals_eval_of_the_model_folder(trained, synth_dir, tmp_path):
    out, overrides, onnx_file = trained
    split = _own_detections_as_val_split(out / "model", synth_dir, tmp_path)
    assert main(["eval", "--model", str(out / "model"), "--eval-dir", str(tmp_path / "pt"),
                 *_sets([*overrides, split])]) == 0
    # a config asking for another eval size: the .onnx is evaluated at the resize it was exported with
    assert main(["eval", "--model", str(onnx_file), "--eval-dir", str(tmp_path / "ox"),
                 *_sets([*overrides, split, "data.eval_size=96", "data.max_size=128"])]) == 0
    pt = json.loads((tmp_path / "pt" / "eval.json").read_text())
    ox = json.loads((tmp_path / "ox" / "eval.json").read_text())
    assert ox["model"].endswith("model.onnx")
    assert pt["AP50"] > 50  # the detections decide these numbers (not 0 == 0)
    same = [pt[k] == ox[k] if None in (pt[k], ox[k]) else abs(pt[k] - ox[k]) < 1e-3 for k in STAT_KEYS]  # null: no GT
    assert all(same), {k: (pt[k], ox[k]) for k in STAT_KEYS}
