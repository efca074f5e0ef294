"""Fault suite, image decoding (docs/reliability.md "Data"): one decoding rule for training, evaluation,
``data validate`` and ``predict``, equal to transformers' ``load_image`` (EXIF orientation applied), so a phone
photo trains on the pixels every viewer and the deployed pipeline show; an annotation made on the stored pixels
is reported (and repaired by mapping its boxes); caches never hand out sizes or pixels of another rule."""
import json

import numpy as np
import pytest
from PIL import Image

from detrdistill.cli import main

RED, GREY = (230, 20, 20), (128, 128, 128)
# PIL's transpose per EXIF orientation (what exif_transpose applies) and its inverse (to store a displayed image)
METHOD = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}
INVERSE = {**METHOD, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def _canvas(size, box):
    img = Image.new("RGB", size, GREY)
    x, y, w, h = box
    img.paste(RED, (x, y, x + w, y + h))
    return img


def _save_oriented(stored: Image.Image, path, orientation: int) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(path, "JPEG", quality=95, exif=exif.tobytes())


def _is_red(img: Image.Image, box) -> bool:
    x, y, w, h = (round(v) for v in box)
    patch = np.asarray(img, dtype=float)[y + 2:y + h - 2, x + 2:x + w - 2]
    return patch.size > 0 and patch[..., 0].mean() > 180 and patch[..., 1].mean() < 80


def _dataset(root, entries):
    """entries: (file name, json (w, h), bbox); one category."""
    images = [{"id": i + 1, "file_name": n, "width": wh[0], "height": wh[1]} for i, (n, wh, _) in enumerate(entries)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": list(b), "area": b[2] * b[3], "iscrowd": 0}
            for i, (_, _, b) in enumerate(entries)]
    (root / "ann.json").write_text(json.dumps({"images": images, "annotations": anns,
                                               "categories": [{"id": 1, "name": "thing"}]}))
    return root / "ann.json"


@pytest.fixture
def phone_photos(tmp_path):
    """JPEGs stored rotated or flipped with an EXIF orientation, annotated on the displayed image (json size and
    boxes of the upright picture): every orientation on a 96x64 picture, and orientation 6 on a square one."""
    (tmp_path / "images").mkdir()
    entries = []
    for o, size, box in [*((o, (96, 64), (10, 8, 30, 20)) for o in range(2, 9)), (6, (64, 64), (5, 30, 20, 25))]:
        name = f"o{o}_{size[0]}x{size[1]}.jpg"
        _save_oriented(_canvas(size, box).transpose(INVERSE[o]), tmp_path / "images" / name, o)
        entries.append((name, size, box))
    return tmp_path, _dataset(tmp_path, entries), entries


def test_oriented_photos_decode_as_displayed_everywhere(phone_photos, capsys):
    from transformers.image_utils import load_image

    from detrdistill.data import CocoDetection
    from detrdistill.data.images import decode_rgb
    from detrdistill.predict import open_rgb

    root, ann, entries = phone_photos
    assert main(["data", "validate", str(ann), "--images", str(root / "images")]) == 0  # no defect
    assert "no defects" in capsys.readouterr().out
    ds = CocoDetection(ann, root / "images", defects="error")
    for i, (name, size, box) in enumerate(entries):
        path = root / "images" / name
        ours = ds.decoded(i)
        assert ours.size == size and _is_red(ours, box), name  # the box is on the object, as drawn
        assert np.array_equal(np.asarray(ours), np.asarray(load_image(str(path)))), name  # = the pipeline's pixels
        assert np.array_equal(np.asarray(open_rgb(path)), np.asarray(decode_rgb(path)))  # predict: the same
        assert tuple(ds[i][1]["size"].tolist()) == (size[1], size[0])  # the training item: pixels and json agree


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_box_follows_the_pixels(orientation):
    from detrdistill.data.images import orient_box

    box = (7, 5, 20, 11)
    stored = _canvas((50, 30), box)
    shown = stored.transpose(METHOD[orientation]) if orientation > 1 else stored
    red = np.argwhere(np.asarray(shown)[..., 0] > 200)
    (y0, x0), (y1, x1) = red.min(0), red.max(0)
    assert orient_box(list(box), stored.size, orientation) == [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def test_boxes_drawn_on_the_stored_pixels_are_reported_and_mapped(tmp_path, capsys):
    from detrdistill.data import CocoDetection

    (tmp_path / "images").mkdir()
    box = (10, 8, 30, 20)
    _save_oriented(_canvas((96, 64), box), tmp_path / "images" / "side.jpg", 6)  # annotated ignoring EXIF
    ann = _dataset(tmp_path, [("side.jpg", (96, 64), box)])
    assert main(["data", "validate", str(ann), "--images", str(tmp_path / "images")]) == 1
    out = capsys.readouterr().out
    assert "orientation_mismatch" in out and "EXIF orientation 6" in out and "64x96" in out
    repaired = CocoDetection(ann, tmp_path / "images", defects="repair")
    assert (repaired.images[0]["width"], repaired.images[0]["height"]) == (64, 96)
    assert "mapped" in repaired.changes[0]
    assert _is_red(repaired.decoded(0), repaired.coco["annotations"][0]["bbox"])  # the boxes fit the pixels again
    with pytest.raises(Exception, match="no usable images"):
        CocoDetection(ann, tmp_path / "images", defects="skip")  # skip drops it


def test_decode_caches_key_on_the_rule(phone_photos):
    from detrdistill.data import CocoDetection
    from detrdistill.data.decode_cache import DecodeCache
    from detrdistill.data.image_cache import ImageCache
    from detrdistill.data.images import DECODE_RULE

    root, ann, entries = phone_photos
    cache = DecodeCache.for_folder(root / "images")
    stale = {}  # what a decoder that ignored the orientation would have remembered: the stored sizes
    for name, size, _ in entries:
        st = (root / "images" / name).stat()
        with Image.open(root / "images" / name) as im:
            stale[name] = [st.st_size, st.st_mtime_ns, *im.size]
    cache.file.parent.mkdir(parents=True, exist_ok=True)
    for version, rule in ((1, None), (2, "no-exif")):
        cache.file.write_text(json.dumps({"version": version, "rule": rule, "folder": str(cache.folder),
                                          "files": stale}))
        ds = CocoDetection(ann, root / "images", defects="error")  # no size_mismatch from the stale sizes
        assert [im["width"] for im in ds.images] == [s[0] for _, s, _ in entries]
    assert json.loads(cache.file.read_text())["rule"] == DECODE_RULE
    images = ImageCache(1 << 20)
    images.get(0, lambda: Image.new("RGB", (2, 2)))
    assert list(images.images) == [(DECODE_RULE, 0)]
