"""Check a COCO detection json (and its images) and report every defect, then clean it by a policy.

    report = validate_coco("bccd/train.json", "bccd/images")
    print(report.format())                      # one line per defect
    clean, changes = apply_policy(load_coco_json(path), report, "repair")

Structural problems (file missing, not JSON, a required field absent) raise :class:`DatasetError`
with one line naming the file and the field. Everything else is collected as a :class:`Defect`.

Defect kinds (``entry`` says which list the defect's ``index`` points into):

=================  ===========  ==========================================================
kind               entry        meaning
=================  ===========  ==========================================================
missing_image      image        ``image_dir/file_name`` does not exist
corrupt_image      image        PIL cannot open / verify the file
size_mismatch      image        json width/height differ from the file's
duplicate_id       any          an image / annotation / category id used more than once
empty_image        image        no annotation refers to the image (warning only)
unknown_image      annotation   ``image_id`` is not among the images
unknown_category   annotation   ``category_id`` is not among the categories
invalid_box        annotation   bbox not 4 finite numbers, or negative width/height
zero_area_box      annotation   bbox width or height is 0
out_of_image_box   annotation   bbox extends (partly or wholly) outside the image
=================  ===========  ==========================================================
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from PIL import Image

KINDS = ("missing_image", "corrupt_image", "size_mismatch", "zero_area_box", "out_of_image_box",
         "invalid_box", "unknown_category", "unknown_image", "empty_image", "duplicate_id")
WARNING_KINDS = frozenset({"empty_image"})
POLICIES = ("repair", "skip", "error")
_REQUIRED = {"images": ("id", "file_name", "width", "height"),
             "annotations": ("id", "image_id", "category_id", "bbox"),
             "categories": ("id", "name")}


class DatasetError(ValueError):
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
    """Every defect of one json, plus the image sizes read from the files (``file_sizes``: id -> (w, h))."""
    file: str
    image_dir: str
    num_images: int = 0
    num_annotations: int = 0
    defects: list[Defect] = field(default_factory=list)
    file_sizes: dict[Any, tuple[int, int]] = field(default_factory=dict)

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
                if (f == "id" or f.endswith("_id")) and (isinstance(v, bool) or not isinstance(v, (int, str))):
                    raise DatasetError(f"{file}: {key}[{i}]: field '{f}' must be an integer, got {v!r}")
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
def _probe_image(path: Path) -> tuple[tuple[int, int] | None, str | None]:
    """(width, height) from the header plus PIL's ``verify()``; (None, reason) when it fails."""
    try:
        with Image.open(path) as im:
            size = im.size
            im.verify()
        return size, None
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error, ...)
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


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


def validate_coco_dict(data: dict, file: str, image_dir: str | Path, check_images: bool = True) -> ValidationReport:
    """Validate an already-loaded (structure-checked) COCO dict; see :func:`validate_coco`."""
    check_structure(data, file)
    image_dir = Path(image_dir)
    rep = ValidationReport(file=file, image_dir=str(image_dir), num_images=len(data["images"]),
                           num_annotations=len(data["annotations"]))
    add = rep.defects.append

    cat_ids: set = set()
    for i, c in enumerate(data["categories"]):
        if c["id"] in cat_ids:
            add(Defect("duplicate_id", file, None, c["id"], f"category id {c['id']} ({c['name']}) used again",
                       entry="category", index=i))
        cat_ids.add(c["id"])

    images: dict[Any, dict] = {}
    sizes: dict[Any, tuple[float, float]] = {}
    if check_images and not image_dir.is_dir():
        raise DatasetError(f"{file}: image folder {image_dir} not found (check data.*.image_dir)")
    for i, im in enumerate(data["images"]):
        iid, name = im["id"], im["file_name"]
        if iid in images:
            add(Defect("duplicate_id", file, iid, None, f"image id {iid} used again (first by "
                       f"{images[iid]['file_name']})", name, "image", i))
            continue
        images[iid] = im
        sizes[iid] = (im["width"], im["height"])
        if not check_images:
            continue
        path = image_dir / name
        if not path.is_file():
            add(Defect("missing_image", file, iid, None, f"{path} not found", name, "image", i))
            continue
        size, why = _probe_image(path)
        if size is None:
            add(Defect("corrupt_image", file, iid, None, f"cannot read {path} ({why})", name, "image", i))
            continue
        rep.file_sizes[iid] = size
        if tuple(size) != (im["width"], im["height"]):
            add(Defect("size_mismatch", file, iid, None, f"json says {im['width']}x{im['height']}, "
                       f"file is {size[0]}x{size[1]}", name, "image", i))
            sizes[iid] = size  # boxes are checked against the real pixels

    ann_ids: set = set()
    used: set = set()
    for i, a in enumerate(data["annotations"]):
        aid, iid = a["id"], a["image_id"]
        im = images.get(iid)
        name = im["file_name"] if im else None

        def defect(kind: str, msg: str) -> None:
            add(Defect(kind, file, iid, aid, msg, name, "annotation", i))

        if aid in ann_ids:
            defect("duplicate_id", f"annotation id {aid} used again")
        ann_ids.add(aid)
        if im is None:
            defect("unknown_image", f"image_id {iid!r} is not among the images")
        else:
            used.add(iid)
        if a["category_id"] not in cat_ids:
            defect("unknown_category", f"category_id {a['category_id']!r} is not among the categories "
                   f"{sorted(cat_ids, key=str)}")
        bbox = a["bbox"]
        problem = _box_problem(bbox)
        if problem:
            defect("invalid_box", problem)
            continue
        x, y, w, h = bbox
        if w == 0 or h == 0:
            defect("zero_area_box", f"bbox {list(bbox)} has zero width or height")
            continue
        if im is not None:
            W, H = sizes[iid]
            if x < 0 or y < 0 or x + w > W or y + h > H:
                inside = x < W and y < H and x + w > 0 and y + h > 0
                defect("out_of_image_box", f"bbox {list(bbox)} extends {'' if inside else 'entirely '}"
                       f"outside the {W}x{H} image")

    for i, im in enumerate(data["images"]):
        if im["id"] not in used and images.get(im["id"]) is im:
            add(Defect("empty_image", file, im["id"], None, "no annotations (kept: empty ground truth is valid)",
                       im["file_name"], "image", i))
    return rep


def validate_coco(ann_file: str | Path, image_dir: str | Path, check_images: bool = True) -> ValidationReport:
    """Report every defect of a COCO json and (when ``check_images``) its image files.

    Images are probed with PIL's header read + ``verify()`` (no full decode), so a few hundred
    images take well under a second. Raises :class:`DatasetError` for structural problems.
    """
    return validate_coco_dict(load_coco_json(ann_file), str(ann_file), image_dir, check_images)


# -------------------------------------------------------------------------------------- policies
_DROP_IMAGE = {"repair": {"missing_image", "corrupt_image"},
               "skip": {"missing_image", "corrupt_image", "size_mismatch"}}
_DROP_ANN = {"repair": {"zero_area_box", "invalid_box", "unknown_category", "unknown_image"},
             "skip": {"zero_area_box", "invalid_box", "unknown_category", "unknown_image",
                      "out_of_image_box", "duplicate_id"}}


def _error_message(report: ValidationReport, limit: int = 10) -> str:
    errs = report.errors
    lines = [f"{report.file}: {len(errs)} dataset defect(s) "
             f"({', '.join(f'{k}={v}' for k, v in report.counts().items() if k not in WARNING_KINDS)}):"]
    lines += ["  " + d.format() for d in errs[:limit]]
    if len(errs) > limit:
        lines.append(f"  ... and {len(errs) - limit} more")
    lines.append(f"Run `detrdistill data validate {report.file}` to list them all, fix the json, or set "
                 "data.defects=repair (clip boxes, drop bad annotations) or data.defects=skip (drop them).")
    return "\n".join(lines)


def apply_policy(coco: dict, report: ValidationReport, policy: str) -> tuple[dict, list[str]]:
    """Clean a COCO dict according to ``policy``; returns ``(new_dict, changes)`` (input untouched).

    repair: clip out-of-image boxes to the image (dropping any that end up empty), drop zero-area /
            invalid / unknown-category / unknown-image annotations, drop missing or corrupt images
            and their annotations, take the file's size on a size mismatch, give duplicate
            annotation ids fresh ids, drop later duplicates of image / category ids.
    skip:   drop every annotation with a defect, and images that are missing, corrupt or whose
            size disagrees with the file (their boxes cannot be trusted), with their annotations.
    error:  raise :class:`DatasetError` listing the first 10 defects unless there are none.
    ``changes`` holds one line per change made, in the :meth:`Defect.format` style.
    """
    if policy not in POLICIES:
        raise DatasetError(f"data.defects: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    if policy == "error":
        if report.errors:
            raise DatasetError(_error_message(report))
        return copy.deepcopy(coco), []
    by_entry: dict[str, dict[int, list[Defect]]] = defaultdict(lambda: defaultdict(list))
    for d in report.errors:
        by_entry[d.entry][d.index].append(d)
    changes: list[str] = []

    cats = []
    for i, c in enumerate(coco["categories"]):
        if by_entry["category"].get(i):
            changes.append(by_entry["category"][i][0].format() + " -> dropped the later entry")
            continue
        cats.append(copy.deepcopy(c))

    images, dropped_ids = [], set()
    for i, im in enumerate(coco["images"]):
        ds = by_entry["image"].get(i, [])
        kinds = {d.kind for d in ds}
        if "duplicate_id" in kinds:
            changes.append(ds[0].format() + " -> dropped the later entry")
            continue
        if kinds & _DROP_IMAGE[policy]:
            dropped_ids.add(im["id"])
            changes.append(ds[0].format() + " -> dropped the image and its annotations")
            continue
        im = copy.deepcopy(im)
        if "size_mismatch" in kinds:
            im["width"], im["height"] = report.file_sizes[im["id"]]
            changes.append(ds[0].format() + " -> using the file's size")
        images.append(im)
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}

    anns: list[dict] = []
    next_id = max((a["id"] for a in coco["annotations"] if isinstance(a["id"], int)), default=0) + 1
    for i, a in enumerate(coco["annotations"]):
        ds = by_entry["annotation"].get(i, [])
        kinds = {d.kind for d in ds}
        if a["image_id"] in dropped_ids:
            continue  # already reported with the image
        drop = kinds & _DROP_ANN[policy]
        if drop:
            d = next(d for d in ds if d.kind in drop)
            changes.append(d.format() + " -> dropped the annotation")
            continue
        a = copy.deepcopy(a)
        if "duplicate_id" in kinds:  # repair only
            a["id"], next_id = next_id, next_id + 1
            changes.append(next(d for d in ds if d.kind == "duplicate_id").format() + f" -> new id {a['id']}")
        if "out_of_image_box" in kinds:  # repair only
            W, H = sizes[a["image_id"]]
            x, y, w, h = a["bbox"]
            x0, y0 = min(max(x, 0), W), min(max(y, 0), H)
            x1, y1 = min(max(x + w, 0), W), min(max(y + h, 0), H)
            d = next(d for d in ds if d.kind == "out_of_image_box")
            if x1 <= x0 or y1 <= y0:
                changes.append(d.format() + " -> dropped (nothing left inside the image)")
                continue
            a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
            a["area"] = (x1 - x0) * (y1 - y0)
            changes.append(d.format() + f" -> clipped to {a['bbox']}")
        anns.append(a)

    out = {k: copy.deepcopy(v) for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=cats)
    return out, changes
