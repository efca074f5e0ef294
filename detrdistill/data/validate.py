"""Check a COCO detection json (and its images) and report every defect, then clean it by a policy.

    report = validate_coco("bccd/train.json", "bccd/images")
    print(report.format())                      # one line per defect
    clean, changes = apply_policy(load_coco_json(path), report, "repair")   # detrdistill.data.policy

Structural problems (file missing, not JSON, a required field absent) raise :class:`DatasetError`
with one line naming the file and the field. Everything else is collected as a :class:`Defect`.

Defect kinds (``entry`` says which list the defect's ``index`` points into):

=================  ===========  ==========================================================
kind               entry        meaning
=================  ===========  ==========================================================
missing_image      image        ``image_dir/file_name`` does not exist
empty_file         image        the image file is 0 bytes
truncated_image    image        the file ends early: it decodes only with PIL's truncation tolerance
                                (``LOAD_TRUNCATED_IMAGES``, the missing part filled in)
corrupt_image      image        PIL cannot decode the file, even with truncation tolerance
size_mismatch      image        json width/height differ from the file's displayed size (after its EXIF orientation)
orientation_mismatch image      json width/height are the file's stored size, but its EXIF orientation displays it
                                with width and height swapped (as training, evaluation and transformers'
                                ``load_image`` decode it): its boxes were likely drawn on the stored pixels
duplicate_id       any          an image / annotation / category id used more than once
empty_image        image        no annotation refers to the image (warning only)
unknown_image      annotation   ``image_id`` is not among the images
unknown_category   annotation   ``category_id`` is not among the categories
invalid_box        annotation   bbox not 4 finite numbers, or negative width/height
zero_area_box      annotation   bbox width or height is 0
out_of_image_box   annotation   bbox extends (partly or wholly) outside the image
empty_dataset      image        the json lists no images (warning only)
=================  ===========  ==========================================================

Every image file is decoded fully, exactly as training decodes it
(:func:`detrdistill.data.images.decode_rgb`: EXIF orientation applied), so whatever passes here cannot fail
in a loader worker and sizes are compared with the image as displayed.
"""
from __future__ import annotations

import json
import math
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import os
from concurrent.futures import ThreadPoolExecutor

from detrdistill.errors import DetrDistillError

from .decode_cache import DecodeCache
from .images import SWAPS_SIDES, check_image_file, classify_failure, exif_orientation, truncation_tolerated

KINDS = ("missing_image", "empty_file", "truncated_image", "corrupt_image", "size_mismatch", "orientation_mismatch",
         "zero_area_box",
         "out_of_image_box", "invalid_box", "unknown_category", "unknown_image", "empty_image", "duplicate_id",
         "empty_dataset")
WARNING_KINDS = frozenset({"empty_image", "empty_dataset"})
_REQUIRED = {"images": ("id", "file_name", "width", "height"),
             "annotations": ("id", "image_id", "category_id", "bbox"),
             "categories": ("id", "name")}


class DatasetError(DetrDistillError, ValueError):
    """A dataset problem the user must fix; the message names the file and field at fault."""


@dataclass(frozen=True)
class Defect:
    """One problem found in a COCO json.

    kind:      one of :data:`KINDS`
    file:      the json file
    image_id:  image the defect belongs to (None for category defects)
    ann_id:    annotation id (None for image/category defects)
    message:   human explanation
    file_name: the image's file_name when known
    entry:     "image" | "annotation" | "category": which json list ``index`` points into
    index:     position of the offending entry in that list (unambiguous even with duplicate ids)
    """
    kind: str
    file: str
    image_id: Any
    ann_id: Any
    message: str
    file_name: str | None = None
    entry: Literal["image", "annotation", "category"] = "annotation"
    index: int | None = None

    def format(self) -> str:
        """``file: image <id> (<file_name>) annotation <ann_id>: <kind>: <message>``"""
        parts = []
        if self.entry == "category":
            parts.append(f"category {self.image_id if self.ann_id is None else self.ann_id}")
        else:
            if self.image_id is not None:
                parts.append(f"image {self.image_id}" + (f" ({self.file_name})" if self.file_name else ""))
            if self.ann_id is not None:
                parts.append(f"annotation {self.ann_id}")
        where = " ".join(parts)
        return f"{self.file}: {where + ': ' if where else ''}{self.kind}: {self.message}"


@dataclass
class ValidationReport:
    """Every defect of one json, plus the image sizes read from the files (``file_sizes``: id -> displayed (w, h))
    and the EXIF orientation of images with an ``orientation_mismatch`` (``orientations``: id -> 5..8)."""
    file: str
    image_dir: str
    num_images: int = 0
    num_annotations: int = 0
    defects: list[Defect] = field(default_factory=list)
    file_sizes: dict[Any, tuple[int, int]] = field(default_factory=dict)
    orientations: dict[Any, int] = field(default_factory=dict)

    @property
    def errors(self) -> list[Defect]:
        """Defects that matter for training (everything but warnings such as ``empty_image``)."""
        return [d for d in self.defects if d.kind not in WARNING_KINDS]

    @property
    def warnings(self) -> list[Defect]:
        return [d for d in self.defects if d.kind in WARNING_KINDS]

    @property
    def ok(self) -> bool:
        return not self.errors

    def counts(self) -> dict[str, int]:
        """kind -> number of defects, in the order of :data:`KINDS` (kinds with none are left out)."""
        c = Counter(d.kind for d in self.defects)
        return {k: c[k] for k in KINDS if c[k]}

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v}" for k, v in self.counts().items()) or "no defects"
        return f"{self.file}: {self.num_images} images, {self.num_annotations} annotations: {counts}"

    def format(self, max_lines: int | None = None) -> str:
        """Human text, one line per defect (at most ``max_lines``), then a summary line."""
        shown = self.defects if max_lines is None else self.defects[:max_lines]
        lines = [d.format() for d in shown]
        if len(shown) < len(self.defects):
            lines.append(f"... and {len(self.defects) - len(shown)} more")
        lines.append(self.summary())
        return "\n".join(lines)


def validate_command(ann_file: str | Path, image_dir: str | Path) -> str:
    """The ``detrdistill data validate`` command line that lists every defect of ``ann_file`` (paths shell-quoted),
    for messages that tell the user to run it."""
    return f"detrdistill data validate {shlex.quote(str(ann_file))} --images {shlex.quote(str(image_dir))}"


# --------------------------------------------------------------------------------------- loading
def load_coco_json(ann_file: str | Path) -> dict:
    """Read a COCO json and check its structure; raises :class:`DatasetError` naming file and field."""
    p = Path(ann_file)
    if not p.is_file():
        raise DatasetError(f"{p}: annotation file not found (check data.*.ann_file)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DatasetError(f"{p}: not a text file; expected a COCO json") from None
    except json.JSONDecodeError as e:
        raise DatasetError(f"{p}: not valid JSON (line {e.lineno} column {e.colno}: {e.msg})") from None
    check_structure(data, str(p))
    return data


def check_structure(data: Any, file: str) -> None:
    """Raise :class:`DatasetError` unless ``data`` has images/annotations/categories lists whose
    entries carry the fields every loader needs."""
    if not isinstance(data, dict):
        raise DatasetError(f"{file}: top level must be an object with 'images', 'annotations' and 'categories'")
    for key, fields in _REQUIRED.items():
        if key not in data:
            raise DatasetError(f"{file}: missing field '{key}' (a COCO detection json needs "
                               "'images', 'annotations' and 'categories')")
        if not isinstance(data[key], list):
            raise DatasetError(f"{file}: field '{key}' must be a list, got {type(data[key]).__name__}")
        for i, entry in enumerate(data[key]):
            if not isinstance(entry, dict):
                raise DatasetError(f"{file}: {key}[{i}] must be an object, got {type(entry).__name__}")
            for f in fields:
                if f not in entry:
                    raise DatasetError(f"{file}: {key}[{i}] is missing field '{f}'")
                v = entry[f]
                if (f == "id" or f.endswith("_id")) and (isinstance(v, bool) or not isinstance(v, int)):
                    raise DatasetError(f"{file}: {key}[{i}]: field '{f}' must be an integer, got {v!r} (COCO ids are "
                                       "integers: the evaluation matches detections to images and classes by them)")
            if key == "images":
                for f in ("width", "height"):
                    v = entry[f]
                    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                        raise DatasetError(f"{file}: {key}[{i}] ({entry['file_name']}): field '{f}' "
                                           f"must be a positive number, got {v!r}")
            if key == "categories" and not isinstance(entry["name"], str):
                raise DatasetError(f"{file}: {key}[{i}]: field 'name' must be a string")
            if key == "images" and not isinstance(entry["file_name"], str):
                raise DatasetError(f"{file}: {key}[{i}]: field 'file_name' must be a string")


# ------------------------------------------------------------------------------------ validation
def _box_problem(bbox: Any) -> str | None:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return f"bbox must be [x, y, w, h], got {bbox!r}"
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox):
        return f"bbox values must be numbers, got {bbox!r}"
    if not all(math.isfinite(v) for v in bbox):
        return f"bbox has non-finite values {bbox!r}"
    if bbox[2] < 0 or bbox[3] < 0:
        return f"bbox has negative width/height {bbox!r}"
    return None


def _check_categories(data: dict, file: str, add) -> set:
    cat_ids: set = set()
    for i, c in enumerate(data["categories"]):
        if c["id"] in cat_ids:
            add(Defect("duplicate_id", file, None, c["id"], f"category id {c['id']} ({c['name']}) used again",
                       entry="category", index=i))
        cat_ids.add(c["id"])
    return cat_ids


def decode_all(paths: list[Path], progress: bool = False, workers: int | None = None,
               cache: DecodeCache | None = None) -> list[tuple]:
    """:func:`~detrdistill.data.images.check_image_file` on every path (threads: PIL decodes without
    the GIL), then the serial truncation retry of the failures. Returns ``(size, kind, reason)`` per path.
    ``cache``: files it knows decoded cleanly (unchanged since) are not decoded again; new clean decodes are added."""
    from tqdm.auto import tqdm

    known = [cache.lookup(p) if cache is not None else None for p in paths]
    todo = [p for p, k in zip(paths, known) if k is None]
    workers = workers or min(8, os.cpu_count() or 1)
    with truncation_tolerated(False):  # decode strictly, as training does, whatever the caller set
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = iter(list(tqdm(pool.map(check_image_file, todo), total=len(todo),
                                     disable=None if progress else True,  # None: bar only on a terminal
                                     desc="decoding images", unit="img", leave=False)))
    out = []
    for p, k in zip(paths, known):
        r = (k, None, None) if k is not None else next(results)
        if r[1] == "undecoded":
            r = classify_failure(p, r[2])
        elif k is None and r[1] is None and cache is not None:
            cache.add(p, r[0])
        out.append(r)
    if cache is not None:
        cache.save()
    return out


def _check_images(data: dict, file: str, image_dir: Path, check_images: bool, progress: bool, rep, add,
                  cache: DecodeCache | None = None) -> tuple:
    """Image entries: duplicate ids and (when ``check_images``) every file decoded. Returns
    ``(images by id, (w, h) by id to check boxes against)``."""
    images: dict[Any, dict] = {}
    sizes: dict[Any, tuple[float, float]] = {}
    todo: list[tuple[int, dict]] = []
    for i, im in enumerate(data["images"]):
        iid, name = im["id"], im["file_name"]
        if iid in images:
            add(Defect("duplicate_id", file, iid, None, f"image id {iid} used again (first by "
                       f"{images[iid]['file_name']})", name, "image", i))
            continue
        images[iid] = im
        sizes[iid] = (im["width"], im["height"])
        todo.append((i, im))
    if not check_images:
        return images, sizes
    decoded = decode_all([image_dir / im["file_name"] for _, im in todo], progress, cache=cache)
    for (i, im), (size, kind, why) in zip(todo, decoded):
        iid, name = im["id"], im["file_name"]
        if size is None:
            add(Defect(kind, file, iid, None, why, name, "image", i))
            continue
        if kind == "truncated_image":
            add(Defect(kind, file, iid, None, why, name, "image", i))
        rep.file_sizes[iid] = size
        if tuple(size) != (im["width"], im["height"]):
            orientation = exif_orientation(image_dir / name) if (size[1], size[0]) == (im["width"], im["height"]) \
                else 1
            if orientation in SWAPS_SIDES:  # boxes stay checked against the stored pixels they were drawn on
                rep.orientations[iid] = orientation
                add(Defect("orientation_mismatch", file, iid, None, f"json says {im['width']}x{im['height']}, the "
                           f"stored pixels' size, but EXIF orientation {orientation} displays the file as "
                           f"{size[0]}x{size[1]} (as training and transformers' load_image decode it); its boxes "
                           "were likely drawn on the stored pixels", name, "image", i))
                continue
            add(Defect("size_mismatch", file, iid, None, f"json says {im['width']}x{im['height']}, "
                       f"file is {size[0]}x{size[1]} as displayed (EXIF orientation applied)", name, "image", i))
            sizes[iid] = size  # boxes are checked against the real pixels
    return images, sizes


def _check_annotation(a: dict, im: dict | None, size, cat_ids: set, defect) -> bool:
    """Defects of one annotation (not duplicates); returns True when its image exists."""
    iid = a["image_id"]
    if im is None:
        defect("unknown_image", f"image_id {iid!r} is not among the images")
    if a["category_id"] not in cat_ids:
        defect("unknown_category", f"category_id {a['category_id']!r} is not among the categories "
               f"{sorted(cat_ids, key=str)}")
    bbox = a["bbox"]
    problem = _box_problem(bbox)
    if problem:
        defect("invalid_box", problem)
        return im is not None
    x, y, w, h = bbox
    if w == 0 or h == 0:
        defect("zero_area_box", f"bbox {list(bbox)} has zero width or height")
    elif im is not None:
        W, H = size
        if x < 0 or y < 0 or x + w > W or y + h > H:
            inside = x < W and y < H and x + w > 0 and y + h > 0
            defect("out_of_image_box", f"bbox {list(bbox)} extends {'' if inside else 'entirely '}"
                   f"outside the {W}x{H} image")
    return im is not None


def _check_annotations(data: dict, file: str, images: dict, sizes: dict, cat_ids: set, add) -> set:
    """Every annotation's defects; returns the ids of images that have at least one annotation."""
    ann_ids: set = set()
    used: set = set()
    for i, a in enumerate(data["annotations"]):
        aid, iid = a["id"], a["image_id"]
        im = images.get(iid)

        def defect(kind: str, msg: str, _i=i, _aid=aid, _iid=iid, _name=im["file_name"] if im else None) -> None:
            add(Defect(kind, file, _iid, _aid, msg, _name, "annotation", _i))

        if aid in ann_ids:
            defect("duplicate_id", f"annotation id {aid} used again")
        ann_ids.add(aid)
        if _check_annotation(a, im, sizes.get(iid), cat_ids, defect):
            used.add(iid)
    return used


def validate_coco_dict(data: dict, file: str, image_dir: str | Path, check_images: bool = True,
                       progress: bool = False, use_cache: bool = False) -> ValidationReport:
    """Validate an already-loaded (structure-checked) COCO dict; see :func:`validate_coco`. ``use_cache``: skip
    files that decoded cleanly before and have not changed since (:mod:`.decode_cache`; dataset loading)."""
    check_structure(data, file)
    image_dir = Path(image_dir)
    rep = ValidationReport(file=file, image_dir=str(image_dir), num_images=len(data["images"]),
                           num_annotations=len(data["annotations"]))
    add = rep.defects.append
    if check_images and not image_dir.is_dir():
        raise DatasetError(f"{file}: image folder {image_dir} not found (check data.*.image_dir)")
    cat_ids = _check_categories(data, file, add)
    cache = DecodeCache.for_folder(image_dir) if use_cache and check_images else None
    images, sizes = _check_images(data, file, image_dir, check_images, progress, rep, add, cache)
    used = _check_annotations(data, file, images, sizes, cat_ids, add)
    for i, im in enumerate(data["images"]):
        if im["id"] not in used and images.get(im["id"]) is im:
            add(Defect("empty_image", file, im["id"], None, "no annotations (kept: empty ground truth is valid)",
                       im["file_name"], "image", i))
    if not data["images"]:
        add(Defect("empty_dataset", file, None, None, "the json lists no images; training needs at least one",
                   entry="image"))
    return rep


def validate_coco(ann_file: str | Path, image_dir: str | Path, check_images: bool = True,
                  progress: bool = False) -> ValidationReport:
    """Report every defect of a COCO json and (when ``check_images``) its image files.

    Every image is decoded fully, as training reads it (in parallel threads; ``progress`` shows a bar),
    so a truncated or otherwise undecodable file is reported here, not in a loader worker mid-run.
    Raises :class:`DatasetError` for structural problems.
    """
    return validate_coco_dict(load_coco_json(ann_file), str(ann_file), image_dir, check_images, progress)
