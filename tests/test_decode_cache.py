"""The decode cache: a dataset's images are decoded in full once; unchanged files are not decoded again, a changed
or damaged one is, failures are never remembered, and an explicit `data validate` decodes everything."""
import json

import pytest
from PIL import Image

from detrdistill.data import validate as validate_mod
from detrdistill.data.decode_cache import DecodeCache
from detrdistill.data.validate import validate_coco, validate_coco_dict


def make_set(tmp_path, n=3):
    d = tmp_path / "images"
    d.mkdir()
    images = []
    for i in range(n):
        Image.new("RGB", (32, 24), (i * 40, 10, 10)).save(d / f"{i}.jpg")
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 32, "height": 24})
    coco = {"images": images, "annotations": [{"id": i, "image_id": i, "category_id": 1, "bbox": [1, 1, 5, 5]}
                                              for i in range(n)], "categories": [{"id": 1, "name": "a"}]}
    return coco, d


@pytest.fixture
def decodes(monkeypatch):
    """Paths decoded by the validator, in order."""
    seen = []
    real = validate_mod.check_image_file

    def counting(path):
        seen.append(path.name)
        return real(path)
    monkeypatch.setattr(validate_mod, "check_image_file", counting)
    return seen


def test_unchanged_files_are_decoded_once_and_changed_ones_again(tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("DETRDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    coco, d = make_set(tmp_path)
    first = validate_coco_dict(coco, "train.json", d, use_cache=True)
    assert sorted(decodes) == ["0.jpg", "1.jpg", "2.jpg"] and first.ok
    decodes.clear()
    again = validate_coco_dict(coco, "train.json", d, use_cache=True)
    assert decodes == [] and again.ok and again.file_sizes == first.file_sizes
    data = (d / "1.jpg").read_bytes()
    (d / "1.jpg").write_bytes(data[: len(data) // 2])  # damaged in place: size and mtime change
    rep = validate_coco_dict(coco, "train.json", d, use_cache=True)
    assert decodes == ["1.jpg"]
    assert [x.kind for x in rep.errors] in (["truncated_image"], ["corrupt_image"])
    decodes.clear()
    validate_coco_dict(coco, "train.json", d, use_cache=True)
    assert decodes == ["1.jpg"]  # a failure is never remembered


def test_explicit_validation_and_the_off_switch_decode_everything(tmp_path, monkeypatch, decodes):
    monkeypatch.setenv("DETRDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    coco, d = make_set(tmp_path)
    (tmp_path / "train.json").write_text(json.dumps(coco))
    validate_coco_dict(coco, "train.json", d, use_cache=True)
    decodes.clear()
    validate_coco(tmp_path / "train.json", d)  # `detrdistill data validate`
    assert len(decodes) == 3
    decodes.clear()
    monkeypatch.setenv("DETRDISTILL_DECODE_CACHE", "0")
    validate_coco_dict(coco, "train.json", d, use_cache=True)
    assert len(decodes) == 3


def test_an_unusable_cache_only_costs_time(tmp_path, monkeypatch, decodes):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    monkeypatch.setenv("DETRDISTILL_CACHE_DIR", str(blocker))  # cannot create decoded/ under a file
    coco, d = make_set(tmp_path)
    assert validate_coco_dict(coco, "train.json", d, use_cache=True).ok
    monkeypatch.setenv("DETRDISTILL_CACHE_DIR", str(tmp_path / "cache"))
    good = DecodeCache.for_folder(d)
    good.file.parent.mkdir(parents=True)
    good.file.write_text("{not json")
    decodes.clear()
    assert validate_coco_dict(coco, "train.json", d, use_cache=True).ok and len(decodes) == 3
    assert json.loads(good.file.read_text())["files"].keys() == {"0.jpg", "1.jpg", "2.jpg"}  # rewritten whole
