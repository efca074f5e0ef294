"""Clean a validated COCO dict by a policy (``data.defects``): repair, skip or error.

    clean, changes = apply_policy(load_coco_json(path), validate_coco(path, images), "repair")

See :func:`apply_policy` for what each policy does with each defect kind (:mod:`detrdistill.data.validate`).
"""
from __future__ import annotations

import copy
from collections import defaultdict

from .images import orient_box
from .validate import WARNING_KINDS, DatasetError, Defect, ValidationReport, validate_command

POLICIES = ("repair", "skip", "error")

# repair keeps a truncated image (it is decoded with PIL's truncation tolerance: most of the picture and
# all its annotations survive, like a clipped box); skip drops it, like every other defective entry.
_DROP_IMAGE = {"repair": {"missing_image", "empty_file", "corrupt_image"},
               "skip": {"missing_image", "empty_file", "corrupt_image", "truncated_image", "size_mismatch",
                        "orientation_mismatch"}}
_DROP_ANN = {"repair": {"zero_area_box", "invalid_box", "unknown_category", "unknown_image"},
             "skip": {"zero_area_box", "invalid_box", "unknown_category", "unknown_image",
                      "out_of_image_box", "duplicate_id"}}


def _error_message(report: ValidationReport, limit: int = 3) -> str:
    """One line: counts, the first ``limit`` defects, and what to do."""
    errs = report.errors
    counts = ", ".join(f"{k}={v}" for k, v in report.counts().items() if k not in WARNING_KINDS)
    first = "; ".join(d.format().removeprefix(f"{report.file}: ") for d in errs[:limit])
    more = f"; ... and {len(errs) - limit} more" if len(errs) > limit else ""
    return (f"{report.file}: {len(errs)} dataset defect(s) ({counts}): {first}{more}. Run "
            f"`{validate_command(report.file, report.image_dir)}` to list them all, fix the data, or set "
            "data.defects=repair (clip boxes, drop bad annotations and unreadable images) or data.defects=skip "
            "(drop them).")


def _by_entry(report: ValidationReport) -> dict[str, dict[int, list[Defect]]]:
    by_entry: dict[str, dict[int, list[Defect]]] = defaultdict(lambda: defaultdict(list))
    for d in report.errors:
        by_entry[d.entry][d.index].append(d)
    return by_entry


def _clean_categories(coco: dict, defects: dict, changes: list[str]) -> list[dict]:
    cats = []
    for i, c in enumerate(coco["categories"]):
        if defects.get(i):
            changes.append(defects[i][0].format() + " -> dropped the later entry")
            continue
        cats.append(copy.deepcopy(c))
    return cats


def _clean_images(coco: dict, defects: dict, report: ValidationReport, policy: str,
                  changes: list[str]) -> tuple[list[dict], set, dict]:
    """(kept images, ids of dropped images, {image id: (stored (w, h), orientation)} of images whose boxes are
    to be mapped onto the displayed image)."""
    images, dropped_ids, remap = [], set(), {}
    for i, im in enumerate(coco["images"]):
        ds = defects.get(i, [])
        kinds = {d.kind for d in ds}
        if "duplicate_id" in kinds:
            changes.append(ds[0].format() + " -> dropped the later entry")
            continue
        if kinds & _DROP_IMAGE[policy]:
            dropped_ids.add(im["id"])
            d = next(d for d in ds if d.kind in _DROP_IMAGE[policy])
            changes.append(d.format() + " -> dropped the image and its annotations")
            continue
        im = copy.deepcopy(im)
        if "truncated_image" in kinds:  # repair only
            changes.append(next(d for d in ds if d.kind == "truncated_image").format()
                           + " -> kept, decoded with truncation tolerance")
        if "size_mismatch" in kinds:
            im["width"], im["height"] = report.file_sizes[im["id"]]
            changes.append(next(d for d in ds if d.kind == "size_mismatch").format() + " -> using the file's size")
        if "orientation_mismatch" in kinds:  # repair only
            remap[im["id"]] = ((im["width"], im["height"]), report.orientations[im["id"]])
            im["width"], im["height"] = report.file_sizes[im["id"]]
            changes.append(next(d for d in ds if d.kind == "orientation_mismatch").format()
                           + " -> boxes mapped from the stored pixels onto the displayed image")
        images.append(im)
    return images, dropped_ids, remap


def _clip_box(a: dict, d: Defect, size: tuple, changes: list[str]) -> bool:
    """Clip ``a['bbox']`` to the image in place; False when nothing is left inside."""
    W, H = size
    x, y, w, h = a["bbox"]
    x0, y0 = min(max(x, 0), W), min(max(y, 0), H)
    x1, y1 = min(max(x + w, 0), W), min(max(y + h, 0), H)
    if x1 <= x0 or y1 <= y0:
        changes.append(d.format() + " -> dropped (nothing left inside the image)")
        return False
    a["bbox"] = [x0, y0, x1 - x0, y1 - y0]
    a["area"] = (x1 - x0) * (y1 - y0)
    changes.append(d.format() + f" -> clipped to {a['bbox']}")
    return True


def _clean_annotations(coco: dict, defects: dict, sizes: dict, dropped_ids: set, policy: str,
                       changes: list[str], remap: dict | None = None) -> list[dict]:
    remap = remap or {}
    anns: list[dict] = []
    next_id = max((a["id"] for a in coco["annotations"] if isinstance(a["id"], int)), default=0) + 1
    for i, a in enumerate(coco["annotations"]):
        ds = defects.get(i, [])
        kinds = {d.kind for d in ds}
        if a["image_id"] in dropped_ids:
            continue  # already reported with the image
        drop = kinds & _DROP_ANN[policy]
        if drop:
            changes.append(next(d for d in ds if d.kind in drop).format() + " -> dropped the annotation")
            continue
        a = copy.deepcopy(a)
        if "duplicate_id" in kinds:  # repair only
            a["id"], next_id = next_id, next_id + 1
            changes.append(next(d for d in ds if d.kind == "duplicate_id").format() + f" -> new id {a['id']}")
        frame = remap.get(a["image_id"])  # (stored size, orientation): boxes drawn on the stored pixels
        if "out_of_image_box" in kinds:  # repair only
            d = next(d for d in ds if d.kind == "out_of_image_box")
            if not _clip_box(a, d, frame[0] if frame else sizes[a["image_id"]], changes):
                continue
        if frame is not None:
            a["bbox"] = orient_box(a["bbox"], *frame)
        anns.append(a)
    return anns


def apply_policy(coco: dict, report: ValidationReport, policy: str) -> tuple[dict, list[str]]:
    """Clean a COCO dict according to ``policy``; returns ``(new_dict, changes)`` (input untouched).

    repair: clip out-of-image boxes to the image (dropping any that end up empty), drop zero-area /
            invalid / unknown-category / unknown-image annotations, drop missing, empty (0-byte) or
            undecodable images and their annotations, keep truncated images (decoded with PIL's
            truncation tolerance, counted in the warning), take the file's size on a size mismatch,
            map the boxes of an orientation mismatch from the stored pixels onto the displayed image,
            give duplicate annotation ids fresh ids, drop later duplicates of image / category ids.
    skip:   drop every annotation with a defect, and images that are missing, empty, truncated,
            undecodable or whose size disagrees with the file or its orientation (their boxes cannot be trusted), with
            their annotations.
    error:  raise :class:`DatasetError` (one line: counts, the first defects, what to do) unless there are none.
    ``changes`` holds one line per change made, in the :meth:`Defect.format` style.
    """
    if policy not in POLICIES:
        raise DatasetError(f"data.defects: unknown policy {policy!r}; use one of {', '.join(POLICIES)}")
    if policy == "error":
        if report.errors:
            raise DatasetError(_error_message(report))
        return copy.deepcopy(coco), []
    by_entry = _by_entry(report)
    changes: list[str] = []
    cats = _clean_categories(coco, by_entry["category"], changes)
    images, dropped_ids, remap = _clean_images(coco, by_entry["image"], report, policy, changes)
    sizes = {im["id"]: (im["width"], im["height"]) for im in images}
    anns = _clean_annotations(coco, by_entry["annotation"], sizes, dropped_ids, policy, changes, remap)
    out = {k: copy.deepcopy(v) for k, v in coco.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=anns, categories=cats)
    return out, changes
