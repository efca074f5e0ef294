"""``detrdistill predict``: drawn PNGs and COCO results equal to the project's evaluation detections."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.cli import main
from detrdistill.config import Config, DataConfig
from detrdistill.export import finish_model_dir
from detrdistill.models.adapters import get_adapter
from detrdistill.models.build import build_model
from detrdistill.predict import PredictError, predict
from tests.test_export import ID2LABEL, project_detections, random_image, tiny_model_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = DataConfig(eval_size=64, max_size=128)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "model"
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg("deformable_detr"), ID2LABEL).eval()
    model.save_pretrained(str(d))
    finish_model_dir(d, Config(data=DATA, model=tiny_model_cfg("deformable_detr")), None, "train")
    return d, get_adapter(model)


def test_predict_writes_pngs_and_coco_results_equal_to_evaluation(saved_model, tmp_path):
    model_dir, adapter = saved_model
    images = tmp_path / "images"
    images.mkdir()
    for i, hw in enumerate([(100, 150), (128, 64)]):
        random_image(*hw, seed=i).save(images / f"img{i}.jpg", quality=95)
    (images / "notes.txt").write_text("not an image")  # ignored: not an image suffix
    threshold = 0.3
    result = predict(model_dir.parent, [images], tmp_path / "out", threshold=threshold, progress=False)

    assert [p.name for p in result.images] == ["img0.png", "img1.png"]
    records = json.loads(result.predictions_file.read_text())
    assert len(records) == result.num_detections
    for image_id, path in enumerate(sorted(images.glob("*.jpg")), start=1):
        img = Image.open(path).convert("RGB")
        ours = project_detections(adapter, img, DATA)
        keep = ours["scores"] >= threshold
        mine = [r for r in records if r["image_id"] == image_id]
        assert len(mine) == int(keep.sum()) > 0
        np.testing.assert_allclose([r["score"] for r in mine], ours["scores"][keep].numpy(), atol=1e-4)
        assert [r["category_id"] for r in mine] == ours["labels"][keep].tolist()
        assert all(r["category_name"] == ID2LABEL[r["category_id"]] for r in mine)
        xyxy = ours["boxes"][keep].numpy()
        xywh = np.concatenate([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1)
        np.testing.assert_allclose([r["bbox"] for r in mine], xywh, atol=0.02)
        drawn = Image.open(tmp_path / "out" / f"{path.stem}.png")
        assert drawn.size == img.size
        assert np.abs(np.asarray(drawn, int) - np.asarray(img, int)).max() > 100  # boxes and labels are drawn


def test_higher_threshold_keeps_fewer(saved_model, tmp_path):
    model_dir, _ = saved_model
    random_image(100, 150).save(tmp_path / "a.png")
    low = predict(model_dir, [tmp_path / "a.png"], tmp_path / "low", threshold=0.0, progress=False)
    high = predict(model_dir, [tmp_path / "a.png"], tmp_path / "high", threshold=0.6, progress=False)
    assert low.num_detections > high.num_detections


def test_errors_are_one_line(saved_model, tmp_path, capsys):
    model_dir, _ = saved_model
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    random_image(64, 64).save(tmp_path / "ok.png")
    with pytest.raises(PredictError, match="no model here"):
        predict(tmp_path / "nowhere", [tmp_path / "ok.png"], tmp_path / "o")
    with pytest.raises(PredictError, match="broken.jpg: cannot read this image"):
        predict(model_dir, [tmp_path / "broken.jpg"], tmp_path / "o", progress=False)
    with pytest.raises(PredictError, match="no such image or folder"):
        predict(model_dir, [tmp_path / "missing.jpg"], tmp_path / "o")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "nowhere"), str(tmp_path / "ok.png"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "no model here" in err[0]


def test_cli_export_writes_a_checked_onnx_file(saved_model, tmp_path, capsys):
    pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")
    model_dir, _ = saved_model
    out = tmp_path / "m.onnx"
    assert main(["export", str(model_dir), "--format", "onnx", "--out", str(out), "--height", "64",
                 "--width", "64"]) == 0
    assert out.is_file() and "onnxruntime vs PyTorch" in capsys.readouterr().out


def test_cli_version_and_defaults_in_help(capsys):
    from detrdistill import __version__

    with pytest.raises(SystemExit):
        main(["--version"])
    assert __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    assert "(default: 0.5)" in capsys.readouterr().out
