"""detrdistill.data: validation, policies, loading, augmentation consistency, synthetic set, collate."""
from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detrdistill.config import DataConfig, SplitConfig
from detrdistill.data import (CocoDetection, DatasetError, apply_policy, build_dataset, build_transforms, collate_fn,
                              denormalize, load_coco_json, make_synthetic_coco, validate_coco)
from detrdistill.data import synth as synth_mod
from detrdistill.data.transforms import hflip, resize
from detrdistill.ops.boxes import cxcywh_to_xyxy


def _data_root() -> Path | None:
    """The real datasets: ``$DETRDISTILL_DATA`` (tests/conftest.py sets it when it finds shared/data)."""
    root = os.environ.get("DETRDISTILL_DATA")
    return Path(root) if root and (Path(root) / "bccd" / "train.json").is_file() else None


DATA = _data_root()
needs_data = pytest.mark.skipif(DATA is None, reason="real datasets not available (set DETRDISTILL_DATA)")


def _write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# ------------------------------------------------------------------------------ real datasets
@needs_data
def test_bccd_reports_exactly_the_listed_zero_area_boxes():
    listed = {line.split(":")[0].strip() + ".jpg" for line in (DATA / "bccd" / "DEFECTS.txt").read_text().splitlines()
              if line.strip()}
    assert listed == {"BloodImage_00338.jpg", "BloodImage_00343.jpg"}
    found = set()
    for split in ("train", "val", "test"):
        rep = validate_coco(DATA / "bccd" / f"{split}.json", DATA / "bccd" / "images")
        found |= {(d.file_name, d.ann_id, d.kind) for d in rep.errors}
    assert found == {("BloodImage_00343.jpg", 2288, "zero_area_box"), ("BloodImage_00338.jpg", 887, "zero_area_box")}


@needs_data
def test_bccd_loads_with_repair_and_refuses_with_error(caplog):
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(DATA / "bccd" / "train.json", DATA / "bccd" / "images")
    assert "1 dataset defect(s) repaired" in caplog.text and "zero_area_box=1" in caplog.text
    assert len(ds) == 205 and len(ds.coco["annotations"]) == 2804
    assert ds.id2label == {0: "WBC", 1: "RBC", 2: "Platelets"} and ds.cat_ids == [1, 2, 3]
    i = next(k for k, im in enumerate(ds.images) if im["file_name"] == "BloodImage_00343.jpg")
    raw = json.loads((DATA / "bccd" / "train.json").read_text())
    n_raw = sum(a["image_id"] == ds.ids[i] for a in raw["annotations"])
    x, t = ds[i]
    assert x.shape == (3, 480, 640) and len(t["boxes"]) == n_raw - 1
    assert (t["boxes"][:, 2:] > 0).all() and t["orig_size"].tolist() == [480, 640]
    with pytest.raises(DatasetError) as e:
        CocoDetection(DATA / "bccd" / "train.json", DATA / "bccd" / "images", defects="error")
    assert "BloodImage_00343.jpg" in str(e.value) and "data.defects=repair" in str(e.value)


@needs_data
def test_raccoon_loads_real_jpgs_including_grayscale():
    cfg = DataConfig(eval_size=256, max_size=400)
    ds = build_dataset(SplitConfig(ann_file=str(DATA / "raccoon/train.json"),
                                   image_dir=str(DATA / "raccoon/images")), cfg, train=False)
    assert len(ds) == 160 and ds.id2label == {0: "raccoon"}
    gray = next(k for k, im in enumerate(ds.images) if im["file_name"] == "raccoon-150.jpg")
    assert Image.open(ds.image_path(gray)).mode == "L"
    items = [ds[k] for k in (0, 1, gray)]
    for x, t in items:
        h, w = t["size"].tolist()
        assert x.shape == (3, h, w) and (min(h, w) == 256 or max(h, w) == 400)
        assert len(t["boxes"]) >= 1 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all()
    g = denormalize(items[2][0])
    assert torch.allclose(g[0], g[1], atol=1e-3) and torch.allclose(g[1], g[2], atol=1e-3)
    batch = collate_fn(items)
    assert batch["pixel_values"].shape[0] == 3 and batch["pixel_values"].shape[-1] % 32 == 0


# ------------------------------------------------------------------------------ crafted defects
def _crafted(tmp_path: Path) -> tuple[Path, Path, dict]:
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(img_dir / "a.png")
    Image.new("RGB", (64, 48), (10, 20, 30)).save(img_dir / "b.png")      # json says 80x60
    (img_dir / "c.jpg").write_bytes(b"this is not a jpeg at all")           # corrupt
    Image.new("RGB", (64, 48)).save(img_dir / "e.png")                     # no annotations
    box = [10.0, 10.0, 20.0, 20.0]
    doc = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 48},
                   {"id": 2, "file_name": "b.png", "width": 80, "height": 60},
                   {"id": 3, "file_name": "c.jpg", "width": 64, "height": 48},
                   {"id": 4, "file_name": "d.png", "width": 64, "height": 48},   # missing file
                   {"id": 5, "file_name": "e.png", "width": 64, "height": 48},
                   {"id": 1, "file_name": "e.png", "width": 64, "height": 48}],  # duplicate image id
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 1, "bbox": box},                    # good
            {"id": 11, "image_id": 1, "category_id": 1, "bbox": [5.0, 5.0, 0.0, 7.0]},   # zero area
            {"id": 12, "image_id": 1, "category_id": 2, "bbox": [50.0, 30.0, 30.0, 30.0]},  # out of image
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [1.0, 1.0, -4.0, 3.0]},  # negative w
            {"id": 14, "image_id": 1, "category_id": 1, "bbox": [1.0, 2.0, 3.0]},        # wrong length
            {"id": 15, "image_id": 1, "category_id": 1, "bbox": [1.0, float("nan"), 3.0, 3.0]},  # non-finite
            {"id": 16, "image_id": 1, "category_id": 7, "bbox": box},                    # unknown category
            {"id": 17, "image_id": 99, "category_id": 1, "bbox": box},                   # unknown image
            {"id": 10, "image_id": 1, "category_id": 2, "bbox": [30.0, 5.0, 10.0, 10.0]},  # duplicate ann id
            {"id": 18, "image_id": 2, "category_id": 1, "bbox": [40.0, 30.0, 30.0, 25.0]},  # outside the real 64x48
            {"id": 19, "image_id": 3, "category_id": 1, "bbox": box},                    # on the corrupt image
            {"id": 20, "image_id": 4, "category_id": 1, "bbox": box},                    # on the missing image
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
    }
    return _write_json(tmp_path / "ann.json", doc), img_dir, doc


def test_each_defect_kind_is_reported(tmp_path):
    ann, img_dir, _ = _crafted(tmp_path)
    rep = validate_coco(ann, img_dir)
    got = {(d.kind, d.ann_id if d.entry == "annotation" else d.image_id) for d in rep.defects}
    assert got == {("zero_area_box", 11), ("out_of_image_box", 12), ("invalid_box", 13), ("invalid_box", 14),
                   ("invalid_box", 15), ("unknown_category", 16), ("unknown_image", 17), ("duplicate_id", 10),
                   ("out_of_image_box", 18), ("size_mismatch", 2), ("corrupt_image", 3), ("missing_image", 4),
                   ("empty_image", 5), ("duplicate_id", 1)}
    assert {d.kind for d in rep.errors} == set(rep.counts()) - {"empty_image"}
    assert rep.counts()["invalid_box"] == 3 and len(rep.defects) == 14
    lines = rep.format().splitlines()
    assert len(lines) == 15  # one per defect + the summary
    assert f"{ann}: image 1 (a.png) annotation 11: zero_area_box: " in lines[[d.ann_id for d in rep.defects].index(11)]
    assert rep.file_sizes[2] == (64, 48)


@pytest.mark.parametrize("doc,field", [({"images": [], "categories": []}, "'annotations'"),
                                       ({"annotations": [], "categories": []}, "'images'"),
                                       ({"images": [], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}],
                                         "categories": []}, "'bbox'"),
                                       ({"images": [{"id": 1, "file_name": "x.png", "width": 0, "height": 3}],
                                         "annotations": [], "categories": []}, "'width'")])
def test_bad_structure_raises_one_line_naming_file_and_field(tmp_path, doc, field):
    ann = _write_json(tmp_path / "bad.json", doc)
    with pytest.raises(DatasetError) as e:
        validate_coco(ann, tmp_path)
    msg = str(e.value)
    assert field in msg and str(ann) in msg and "\n" not in msg


def test_not_json_and_missing_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(DatasetError, match="not valid JSON"):
        load_coco_json(tmp_path / "x.json")
    with pytest.raises(DatasetError, match="not found"):
        CocoDetection(tmp_path / "missing.json", tmp_path)


def _run_suggested_validate(text: str) -> int:
    """Run the ``detrdistill data validate ...`` command that ``text`` suggests (in backticks); its exit code."""
    import shlex

    from detrdistill.cli import main
    argv = shlex.split(text.split("run `detrdistill ", 1)[1].split("`", 1)[0])
    assert argv[:2] == ["data", "validate"] and "--images" in argv, text  # the images are checked too
    return main(argv)


def test_data_validate_without_images_needs_no_image_folder(tmp_path, capsys):
    """``--no-images`` checks the json alone (no --images needed, no image file opened); without either flag the
    usage error names both."""
    from detrdistill.cli import main
    ann, img_dir, _ = _crafted(tmp_path)
    assert main(["data", "validate", str(ann), "--no-images"]) == 1  # the crafted json's own defects
    out = capsys.readouterr().out
    assert "duplicate_id=2" in out and "invalid_box=3" in out, out
    assert not any(code in out for code in ("missing_image", "corrupt_image", "size_mismatch")), out  # files unread
    with pytest.raises(SystemExit) as e:
        main(["data", "validate", str(ann)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "required: --images" in err and "--no-images" in err, err


def test_the_repair_warning_names_a_data_validate_command_that_runs(tmp_path, caplog):
    """The command the warning suggests parses and lists the defects (exit code 1)."""
    ann, img_dir, _ = _crafted(tmp_path)
    with caplog.at_level(logging.WARNING):
        CocoDetection(ann, img_dir, defects="repair")
    assert _run_suggested_validate(caplog.text) == 1


def test_an_image_replaced_after_loading_is_refused_with_a_validate_command_that_runs(tmp_path):
    """A file whose size no longer matches its (validated) json entry: one error naming both and a full command."""
    ann, img_dir, _ = _crafted(tmp_path)
    ds = CocoDetection(ann, img_dir, defects="repair")
    i = next(k for k, im in enumerate(ds.images) if im["file_name"] == "a.png")
    Image.new("RGB", (30, 20), (10, 20, 30)).save(img_dir / "a.png")
    with pytest.raises(DatasetError) as e:
        ds[i]
    msg = str(e.value)
    assert "a.png: file is 30x20" in msg and "says 64x48" in msg
    assert _run_suggested_validate(msg) == 1


def test_policy_error_raises_helpful_message(tmp_path):
    ann, img_dir, doc = _crafted(tmp_path)
    rep = validate_coco(ann, img_dir)
    with pytest.raises(DatasetError) as e:
        apply_policy(doc, rep, "error")
    msg = str(e.value)
    assert "\n" not in msg and not msg.rstrip().endswith(":")  # one line that lists defects
    assert "13 dataset defect(s)" in msg and "... and 10 more" in msg
    assert "detrdistill data validate" in msg and "data.defects=repair" in msg
    for d in rep.errors[:3]:
        assert d.format().removeprefix(f"{ann}: ") in msg
    with pytest.raises(DatasetError, match="unknown policy"):
        apply_policy(doc, rep, "ignore")


def test_policy_repair_clips_and_drops(tmp_path):
    ann, img_dir, doc = _crafted(tmp_path)
    before = json.dumps(doc)
    rep = validate_coco(ann, img_dir)
    clean, changes = apply_policy(doc, rep, "repair")
    assert json.dumps(doc) == before  # input untouched
    anns = {a["id"]: a for a in clean["annotations"]}
    assert anns[12]["bbox"] == [50.0, 30.0, 14.0, 18.0] and anns[12]["area"] == 14.0 * 18.0
    assert anns[18]["bbox"] == [40.0, 30.0, 24.0, 18.0]  # clipped to the file's 64x48
    assert anns[10]["bbox"] == [10.0, 10.0, 20.0, 20.0]
    assert not {11, 13, 14, 15, 16, 17, 19, 20} & set(anns)
    assert len(clean["annotations"]) == 4 and len({a["id"] for a in clean["annotations"]}) == 4  # dup renumbered
    assert [(im["id"], im["file_name"]) for im in clean["images"]] == [(1, "a.png"), (2, "b.png"), (5, "e.png")]
    assert (clean["images"][1]["width"], clean["images"][1]["height"]) == (64, 48)
    assert len(changes) == len(rep.errors) == 13  # one line per error (19, 20 go with their images)
    ds = CocoDetection(ann, img_dir)
    assert len(ds) == 3 and ds.num_classes == 2
    assert [len(ds[i][1]["boxes"]) for i in range(3)] == [3, 1, 0]  # empty image kept
    assert len(ds.coco_gt.getAnnIds()) == 4


def test_policy_skip_drops_every_defective_annotation(tmp_path):
    ann, img_dir, doc = _crafted(tmp_path)
    clean, changes = apply_policy(doc, validate_coco(ann, img_dir), "skip")
    assert [a["id"] for a in clean["annotations"]] == [10]
    assert clean["annotations"][0]["bbox"] == [10.0, 10.0, 20.0, 20.0]
    assert [im["id"] for im in clean["images"]] == [1, 5]
    assert any("out_of_image_box" in c for c in changes)


# ------------------------------------------------------------------------------ transforms
_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (255, 0, 255), (0, 255, 255), (255, 255, 255)]


def _rect_scene(rng: random.Random):
    W, H = rng.randint(90, 200), rng.randint(90, 200)
    arr = np.zeros((H, W, 3), np.uint8)
    boxes, labels = [], []
    for label in range(len(_COLOURS)):
        for _ in range(30):
            w, h = rng.randint(4, W // 3), rng.randint(4, H // 3)
            x, y = rng.randint(0, W - w), rng.randint(0, H - h)
            if all(x >= b[2] + 4 or b[0] >= x + w + 4 or y >= b[3] + 4 or b[1] >= y + h + 4 for b in boxes):
                arr[y:y + h, x:x + w] = _COLOURS[label]
                boxes.append((x, y, x + w, y + h))
                labels.append(label)
                break
    target = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
              "class_labels": torch.tensor(labels, dtype=torch.long), "image_id": 0}
    return Image.fromarray(arr), target


def _colour_mask(img: torch.Tensor, colour) -> torch.Tensor:
    """[3, H, W] values in [0, 255] -> bool [H, W] where each channel is on the colour's side of 128."""
    on = torch.tensor([c > 0 for c in colour]).view(3, 1, 1)
    return torch.where(on, img > 127.5, img < 127.5).all(0)


def test_augmentation_keeps_boxes_on_their_pixels():
    cfg = DataConfig(min_size=[48, 80, 128, 180], max_size=220, hflip=0.5, crop=0.8, crop_min=0.3)
    tf = build_transforms(cfg, train=True)
    dropped_runs = resized = 0
    for seed in range(60):
        img, target = _rect_scene(random.Random(1000 + seed))
        random.seed(seed)
        torch.manual_seed(seed)
        x, out = tf(img, target)
        h, w = out["size"].tolist()
        assert x.shape == (3, h, w)
        px = denormalize(x) * 255
        labels = out["class_labels"].tolist()
        assert set(labels) <= set(target["class_labels"].tolist()) and len(labels) >= 1
        assert len(set(labels)) == len(labels) and (out["boxes"][:, 2:] > 0).all()
        dropped_runs += len(labels) < len(target["boxes"])
        resized += (h, w) != (img.height, img.width)
        boxes = cxcywh_to_xyxy(out["boxes"]) * torch.tensor([w, h, w, h])
        for label, box in zip(labels, boxes):
            if min(box[2] - box[0], box[3] - box[1]) < 3:
                continue  # too small to see reliably after resampling
            ys, xs = torch.nonzero(_colour_mask(px, _COLOURS[label]), as_tuple=True)
            assert len(xs) > 0, f"seed {seed}: label {label} kept but its colour vanished"
            seen = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
            assert (seen - box).abs().max() <= 1.0, \
                f"seed {seed} label {label}: box {box.tolist()} pixels {seen.tolist()}"
        for label in set(range(len(_COLOURS))) - set(labels):
            assert _colour_mask(px, _COLOURS[label]).sum() == 0, f"seed {seed}: label {label} dropped but visible"
    assert dropped_runs > 0 and resized > 0  # the crop really dropped objects in some runs


def test_augmentation_is_deterministic_given_seed():
    tf = build_transforms(DataConfig(min_size=[64, 96], max_size=160), train=True)
    img, target = _rect_scene(random.Random(5))
    outs = []
    for _ in range(2):
        random.seed(123)
        outs.append(tf(img, target))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1]["boxes"], outs[1][1]["boxes"])


def test_hflip_maps_boxes():
    arr = np.zeros((50, 100, 3), np.uint8)
    arr[5:25, 10:30] = 255
    target = {"boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0]]), "class_labels": torch.tensor([0])}
    img, out = hflip(Image.fromarray(arr), target)
    assert out["boxes"].tolist() == [[70.0, 5.0, 90.0, 25.0]]
    ys, xs = np.nonzero(np.asarray(img)[..., 0])
    assert (xs.min(), xs.max() + 1, ys.min(), ys.max() + 1) == (70, 90, 5, 25)
    assert target["boxes"].tolist() == [[10.0, 5.0, 30.0, 25.0]]  # input target not modified


def test_resize_follows_detr_rule_and_scales_boxes():
    t = {"boxes": torch.tensor([[64.0, 48.0, 640.0, 480.0]]), "class_labels": torch.tensor([0])}
    img, out = resize(Image.new("RGB", (640, 480)), t, 512, 800)
    assert img.size == (682, 512)
    img, out = resize(Image.new("RGB", (640, 480)), t, 512, 600)
    assert img.size == (600, 450) and torch.allclose(out["boxes"], torch.tensor([[60.0, 45.0, 600.0, 450.0]]))


def test_crop_never_removes_every_object():
    from detrdistill.data import RandomSizeCrop
    arr = np.zeros((200, 200, 3), np.uint8)
    target = {"boxes": torch.tensor([[190.0, 190.0, 196.0, 196.0]]), "class_labels": torch.tensor([1])}
    crop = RandomSizeCrop(p=1.0, min_frac=0.3)
    cropped = 0
    for seed in range(200):
        random.seed(seed)
        img, out = crop(Image.fromarray(arr), target)
        assert out["class_labels"].tolist() == [1]
        assert out["boxes"][0, 2] <= img.width and out["boxes"][0, 3] <= img.height
        cropped += img.size != (200, 200)
    assert 0 < cropped < 200


# ------------------------------------------------------------------------------ loading & collate
def test_unusual_image_modes_load_as_rgb(tmp_path):
    img_dir = tmp_path / "images"
    img_dir.mkdir()
    Image.new("L", (40, 30), 200).save(img_dir / "gray.jpg")
    Image.new("RGBA", (40, 30), (255, 0, 0, 255)).save(img_dir / "rgba.png")
    Image.new("CMYK", (40, 30), (0, 255, 255, 0)).save(img_dir / "cmyk.jpg")
    Image.new("P", (40, 30), 3).save(img_dir / "pal.png")
    Image.fromarray(np.full((30, 40), 40000, np.uint16)).save(img_dir / "g16.png")
    names = ["gray.jpg", "rgba.png", "cmyk.jpg", "pal.png", "g16.png"]
    doc = {"images": [{"id": i + 1, "file_name": n, "width": 40, "height": 30} for i, n in enumerate(names)],
           "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10]}],
           "categories": [{"id": 1, "name": "thing"}]}
    ds = CocoDetection(_write_json(tmp_path / "a.json", doc), img_dir)
    px = [denormalize(ds[i][0]) * 255 for i in range(len(names))]
    assert all(p.shape == (3, 30, 40) for p in px)
    assert (px[0] - 200).abs().max() < 3                                   # gray -> equal channels
    assert px[1][:, 0, 0].round().tolist() == [255.0, 0.0, 0.0]           # RGBA opaque red
    assert px[2][0].mean() > 200 and px[2][1].mean() < 60                  # CMYK (0,255,255,0) is red
    assert abs(px[4].mean().item() - 40000 / 65535 * 255) < 2             # 16-bit scaled, not saturated
    assert torch.allclose(ds[0][1]["boxes"], torch.tensor([[0.25, 10 / 30, 0.25, 10 / 30]]))


def test_collate_pads_and_masks():
    a, b = torch.randn(3, 50, 70), torch.randn(3, 64, 33)
    items = [(a, {"n": 1}), (b, {"n": 2})]
    out = collate_fn(items)
    assert out["pixel_values"].shape == (2, 3, 64, 96) and out["pixel_mask"].dtype == torch.long
    assert out["pixel_mask"][0].sum() == 50 * 70 and out["pixel_mask"][1].sum() == 64 * 33
    assert out["pixel_mask"][0, :50, :70].all() and not out["pixel_mask"][0, 50:].any()
    assert torch.equal(out["pixel_values"][0, :, :50, :70], a) and out["pixel_values"][0, :, :, 70:].abs().sum() == 0
    assert torch.equal(out["pixel_values"][1, :, :, :33], b) and [t["n"] for t in out["labels"]] == [1, 2]
    assert collate_fn(items, size_divisor=1)["pixel_values"].shape == (2, 3, 64, 70)


# ------------------------------------------------------------------------------ synthetic
def test_synth_is_deterministic_and_reused(tmp_path):
    kw = dict(num_train=10, num_val=4, size=96)
    p1 = make_synthetic_coco(tmp_path / "a", seed=3, **kw)
    make_synthetic_coco(tmp_path / "b", seed=3, **kw)
    p3 = make_synthetic_coco(tmp_path / "c", seed=4, **kw)
    files = sorted(f.relative_to(tmp_path / "a") for f in (tmp_path / "a").rglob("*") if f.is_file())
    assert len(files) == 14 + 3
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert Path(p1["train"]).read_bytes() != Path(p3["train"]).read_bytes()
    mtime = Path(p1["meta"]).stat().st_mtime_ns
    assert make_synthetic_coco(tmp_path / "a", seed=3, **kw) == p1 and Path(p1["meta"]).stat().st_mtime_ns == mtime
    p4 = make_synthetic_coco(tmp_path / "a", seed=3, num_train=6, num_val=4, size=96)  # params changed
    assert len(json.loads(Path(p4["train"]).read_text())["images"]) == 6 and p4 == p1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="not a synthetic dataset"):
        make_synthetic_coco(tmp_path / "other")


def test_synth_crash_leaves_nothing(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = synth_mod._make_image

    def flaky(rng, size):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("simulated crash")
        return real(rng, size)

    monkeypatch.setattr(synth_mod, "_make_image", flaky)
    with pytest.raises(RuntimeError):
        make_synthetic_coco(tmp_path / "s", num_train=8, num_val=2, size=64)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # generates the full-size synthetic set
def test_synth_full_size_content_and_loading(tmp_path):
    paths = make_synthetic_coco(tmp_path / "s")  # defaults: 160 + 40 images of 256 px
    rep = validate_coco(paths["train"], paths["image_dir"])
    assert rep.defects == [] and rep.num_images == 160
    doc = json.loads(Path(paths["train"]).read_text())
    assert [c["id"] for c in doc["categories"]] == [1, 2, 3, 4, 5]
    per_image = np.bincount([a["image_id"] for a in doc["annotations"]])[1:]
    assert per_image.min() >= 1 and per_image.max() <= 8
    areas = np.array([a["area"] for a in doc["annotations"]])
    small, large = (areas < 32 ** 2).sum(), (areas >= 96 ** 2).sum()
    assert small > 50 and len(areas) - small - large > 50 and large > 20  # all COCO size buckets
    assert len({a["category_id"] for a in doc["annotations"]}) == 5
    cfg = DataConfig(min_size=[192, 224, 256], max_size=320)
    ds = build_dataset(SplitConfig(ann_file=paths["val"], image_dir=paths["image_dir"]), cfg, train=True)
    assert len(ds) == 40
    for i in range(0, 40, 4):
        x, t = ds[i]
        assert x.shape[0] == 3 and ((t["boxes"] >= 0) & (t["boxes"] <= 1)).all() and (t["boxes"][:, 2:] > 0).all()
        assert (t["class_labels"] < 5).all() and len(t["boxes"]) >= 1
    gt = ds.coco_gt
    assert sorted(gt.getCatIds()) == ds.cat_ids and len(gt.getAnnIds()) == len(ds.coco["annotations"])


def test_coco_gt_is_silent(tmp_path, capsys):
    paths = make_synthetic_coco(tmp_path / "s", num_train=4, num_val=2, size=64)
    ds = CocoDetection(paths["train"], paths["image_dir"])
    assert len(ds.coco_gt.getImgIds()) == 4
    assert capsys.readouterr().out == ""
