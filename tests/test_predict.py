"""``detrdistill predict``: drawn PNGs and COCO results equal to the project's evaluation detections."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.cli import main
from detrdistill.config import Config, DataConfig
from detrdistill.errors import PredictError
from detrdistill.export import finish_model_dir
from detrdistill.models.build import build_model
from detrdistill.models.families import get_adapter
from detrdistill.predict import predict
from tests.test_export import ID2LABEL, project_detections, random_image, tiny_model_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = DataConfig(eval_size=64, max_size=128)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("run") / "model"
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg("deformable_detr"), ID2LABEL).eval()
    model.save_pretrained(str(d))
    finish_model_dir(d, Config(data=DATA, model=tiny_model_cfg("deformable_detr")), model.config)
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


@pytest.mark.slow  # an ONNX export
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


# ------------------------------------------------------------------ inputs: folders, globs, lists, bad files
def _jpegs(folder, n=5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        random_image(64 + 8 * i, 80, seed=i).save(folder / f"good{i}.jpg", quality=90)
    return sorted(folder.glob("good*.jpg"))


def test_a_corrupt_file_is_skipped_with_one_warning_and_exit_1(saved_model, tmp_path, capsys, caplog):
    model_dir, _ = saved_model
    good = _jpegs(tmp_path / "imgs")
    (tmp_path / "imgs" / "corrupt.jpg").write_bytes(b"\xff\xd8 garbage, not a jpeg")
    data = good[0].read_bytes()
    (tmp_path / "imgs" / "truncated.jpg").write_bytes(data[: len(data) // 2])  # header fine, pixels cut off
    capsys.readouterr()
    with caplog.at_level("WARNING", logger="detrdistill"):
        code = main(["predict", str(model_dir), str(tmp_path / "imgs"), "--out", str(tmp_path / "out"),
                     "--threshold", "0.3"])
    assert code == 1  # done, but inputs were skipped
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipped")]
    assert len(skipped) == 2 and any("corrupt.jpg" in m for m in skipped) and any("truncated.jpg" in m for m in skipped)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [f"{p.stem}.png" for p in good]
    records = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {r["file_name"] for r in records} == {str(p) for p in good}
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("5 images")
    result = predict(model_dir, [tmp_path / "imgs"], tmp_path / "out2", threshold=0.3, progress=False)
    assert len(result.images) == 5 and {p.name for p, _ in result.skipped} == {"corrupt.jpg", "truncated.jpg"}


def test_the_summary_line_counts_the_skipped(saved_model, tmp_path, capsys):
    model_dir, _ = saved_model
    _jpegs(tmp_path / "imgs", n=2)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(tmp_path / "imgs"), "--out", str(tmp_path / "out")]) == 1
    assert capsys.readouterr().out.strip().endswith("1 skipped (unreadable, see the warnings)")


def test_nothing_readable_is_an_error_and_writes_nothing(saved_model, tmp_path, capsys):
    model_dir, _ = saved_model
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.jpg").write_bytes(b"garbage")
    (tmp_path / "imgs" / "b.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(tmp_path / "imgs"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of the 2 input file(s) is a readable image" in err[0]
    assert not (tmp_path / "out").exists()


def test_inputs_accept_folders_globs_and_list_files(tmp_path, monkeypatch):
    from detrdistill.predict import collect_images

    good = _jpegs(tmp_path / "a", n=3)
    other = _jpegs(tmp_path / "b" / "c", n=2)
    (tmp_path / "a" / "notes.md").write_text("not an image")
    listing = tmp_path / "b" / "list.txt"
    listing.write_text(f"# my picks\n\nc/{other[1].name}\n{good[0]}\n")  # relative to the list, and absolute
    got = collect_images([str(tmp_path / "a" / "*.jpg"), listing, good[0], tmp_path / "b" / "c"])
    assert got == [*good, other[1], other[0]]  # pattern (sorted), list, a duplicate dropped, a folder (sorted)
    assert collect_images([str(tmp_path / "**" / "good1.jpg")]) == [good[1], other[1]]  # recursive glob
    with pytest.raises(PredictError, match="no image matches this pattern"):
        collect_images([str(tmp_path / "a" / "*.png")])
    listing.write_text("c/missing.jpg\n")
    with pytest.raises(PredictError, match=r"missing.jpg: no such image or folder \(listed in"):
        collect_images([listing])


# ------------------------------------------------------------------ ids a user can score: --ann
def _ground_truth_from_own_detections(model_dir, files, tmp_path, cat_ids, image_ids):
    """A COCO json whose boxes are the model's own confident detections, under non-contiguous dataset ids
    (category ids in an order other than the labels', image ids other than file order)."""
    first = predict(model_dir, files, tmp_path / "first", threshold=0.0, progress=False)
    records = json.loads(first.predictions_file.read_text())
    images, anns = [], []
    for k, path in enumerate(files):
        w, h = Image.open(path).size
        images.append({"id": image_ids[k], "file_name": f"photos/{path.name}", "width": w, "height": h})
        mine = sorted((r for r in records if r["image_id"] == k + 1), key=lambda r: -r["score"])[:4]
        for r in mine:
            anns.append({"id": len(anns) + 1, "image_id": image_ids[k], "category_id": cat_ids[r["category_id"]],
                         "bbox": r["bbox"], "area": r["bbox"][2] * r["bbox"][3], "iscrowd": 0})
    cats = [{"id": cat_ids[label], "name": name} for label, name in ID2LABEL.items()]
    ann = tmp_path / "gt.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return ann


def test_ann_gives_the_datasets_ids_and_prints_coco_stats(saved_model, tmp_path, capsys):
    model_dir, _ = saved_model
    photos = tmp_path / "photos"
    files = _jpegs(photos, n=3)
    cat_ids = {0: 30, 1: 10, 2: 20}  # label -> the dataset's id, not in label order
    image_ids = [701, 42, 9000]
    ann = _ground_truth_from_own_detections(model_dir, files, tmp_path, cat_ids, image_ids)
    result = predict(model_dir, [photos], tmp_path / "out", threshold=0.0, progress=False, ann=ann)
    records = json.loads(result.predictions_file.read_text())
    assert {r["image_id"] for r in records} == set(image_ids)
    assert all(r["category_id"] == cat_ids[[*ID2LABEL.values()].index(r["category_name"])] for r in records)
    # the model found its own boxes under the dataset's ids: only a right mapping scores near 100
    assert result.stats["AP50"] > 99 and result.stats["AP"] > 90, result.stats
    capsys.readouterr()
    assert main(["predict", str(model_dir), str(photos), "--out", str(tmp_path / "cli"), "--threshold", "0",
                 "--ann", str(ann)]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"COCO bbox ({ann}): AP {result.stats['AP']:.2f}, AP50 {result.stats['AP50']:.2f}")


def test_ann_scores_only_the_predicted_images(saved_model, tmp_path):
    model_dir, _ = saved_model
    files = _jpegs(tmp_path / "photos", n=3)
    ann = _ground_truth_from_own_detections(model_dir, files, tmp_path, {0: 1, 1: 2, 2: 3}, [1, 2, 3])
    one = predict(model_dir, files[:1], tmp_path / "one", threshold=0.0, progress=False, ann=ann)
    assert one.stats["AP50"] > 99  # the two images not predicted do not count as misses


def test_ann_errors_are_one_line(saved_model, tmp_path):
    model_dir, _ = saved_model
    files = _jpegs(tmp_path / "photos", n=2)
    ann = _ground_truth_from_own_detections(model_dir, files[:1], tmp_path, {0: 1, 1: 2, 2: 3}, [1])
    with pytest.raises(PredictError, match=r"gt.json: no image entry for .*good1.jpg \(matched by file_name\)"):
        predict(model_dir, files, tmp_path / "o", progress=False, ann=ann)
    gt = json.loads(ann.read_text())
    gt["categories"] = [c for c in gt["categories"] if c["name"] != "square"]
    gt["annotations"] = [a for a in gt["annotations"] if a["category_id"] != 2]
    ann.write_text(json.dumps(gt))
    with pytest.raises(PredictError, match=r"the model's classes \['square'\] are not categories of this file"):
        predict(model_dir, files[:1], tmp_path / "o", progress=False, ann=ann)
