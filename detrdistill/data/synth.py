"""Deterministic synthetic shapes dataset in COCO format (a learnable, seconds-to-make benchmark).

    paths = make_synthetic_coco("runs/x/data", num_train=160, num_val=40, size=256, seed=0)
    CocoDetection(paths["train"], paths["image_dir"])

Five shape classes (circle, square, triangle, cross, ring), 1-8 objects per image, sides spread
over COCO's small / medium / large area ranges (< 32, 32-96, > 96 px at 256 px images; the ranges
scale with ``size``), random colours kept far from the local background, limited overlaps, and
textured backgrounds (noise, gradients, stripes, checkerboards). Boxes are the tight pixel
bounding box of each drawn shape; ``area`` is the box area w*h (as in bccd / raccoon), so COCO's
small / medium / large ranges follow the sides above.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same arguments give byte-identical
json and png files. The dataset is written to a temporary sibling folder and renamed into place, so
a crash never leaves a half dataset; a folder whose ``meta.json`` matches the arguments is reused.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from .validate import DatasetError

GENERATOR_VERSION = 1
CLASSES = ("circle", "square", "triangle", "cross", "ring")
# side as a fraction of the image side: small / medium / large (COCO buckets at 256 px)
_SIDE_RANGES = ((0.05, 0.12), (0.13, 0.37), (0.38, 0.6))
_SIDE_PROBS = (0.35, 0.45, 0.20)
_MAX_OVERLAP = 0.3  # neither box may be covered by more than this fraction by the other


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Textured background, float32 [size, size, 3] in [0, 255]."""
    base = rng.uniform(40, 215, 3).astype(np.float32)
    kind = rng.integers(4)
    yy, xx = _grid(size)
    if kind == 0:    # gradient between two nearby colours
        other = np.clip(base + rng.uniform(-60, 60, 3).astype(np.float32), 0, 255)
        a = rng.uniform(0, 2 * np.pi)
        t = np.float32(np.cos(a)) * xx + np.float32(np.sin(a)) * yy
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        img = base + t[..., None] * (other - base)
    elif kind == 1:  # stripes at a random angle
        a, period = rng.uniform(0, np.pi), np.float32(rng.uniform(0.04, 0.15))
        s = np.sin(np.float32(2 * np.pi) * (np.float32(np.cos(a)) * xx + np.float32(np.sin(a)) * yy) / period)
        img = base + s[..., None] * rng.uniform(10, 30, 3).astype(np.float32)
    elif kind == 2:  # checkerboard
        cell = np.float32(rng.integers(8, 32) / size)
        s = ((np.floor(xx / cell) + np.floor(yy / cell)) % 2) * 2 - 1
        img = base + s[..., None] * rng.uniform(8, 25, 3).astype(np.float32)
    else:            # smooth blotches: upsampled low-res noise
        low = rng.normal(0, 25, (8, 8, 3)).astype(np.float32)
        up = np.asarray(Image.fromarray(np.clip(low + 128, 0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BILINEAR), dtype=np.float32) - 128
        img = base + up
    return np.broadcast_to(img, (size, size, 3)).astype(np.float32)


@functools.lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    return yy, xx


def _colour(rng: np.random.Generator, bg: np.ndarray) -> tuple[int, int, int]:
    """A random colour at least 120 (RGB distance) away from the background colour ``bg``."""
    for _ in range(50):
        c = rng.integers(0, 256, 3)
        if np.linalg.norm(c - bg) > 120:
            return tuple(int(v) for v in c)
    return tuple(int(v) for v in np.where(bg > 127, 0, 255))


def _draw_shape(draw: ImageDraw.ImageDraw, cls: str, x0: int, y0: int, w: int, h: int, rng) -> None:
    """Draw one filled shape (value 255) inside the box (x0, y0, w, h) on a mode-"L" mask."""
    x1, y1 = x0 + w - 1, y0 + h - 1
    if cls == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=255)
    elif cls == "square":
        draw.rectangle((x0, y0, x1, y1), fill=255)
    elif cls == "triangle":
        pts = {0: [(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], 1: [(x0, y0), (x1, y0), ((x0 + x1) / 2, y1)],
               2: [(x0, y0), (x0, y1), (x1, (y0 + y1) / 2)], 3: [(x1, y0), (x1, y1), (x0, (y0 + y1) / 2)]}
        draw.polygon(pts[int(rng.integers(4))], fill=255)
    elif cls == "cross":
        tw, th = max(2, round(w * 0.3)), max(2, round(h * 0.3))
        cx, cy = x0 + (w - tw) // 2, y0 + (h - th) // 2
        draw.rectangle((cx, y0, cx + tw - 1, y1), fill=255)
        draw.rectangle((x0, cy, x1, cy + th - 1), fill=255)
    else:  # ring
        draw.ellipse((x0, y0, x1, y1), fill=255)
        t = max(2, round(min(w, h) * 0.22))
        draw.ellipse((x0 + t, y0 + t, x1 - t, y1 - t), fill=0)


def _overlap_ok(box, boxes) -> bool:
    x0, y0, w, h = box
    for bx, by, bw, bh in boxes:
        iw = min(x0 + w, bx + bw) - max(x0, bx)
        ih = min(y0 + h, by + bh) - max(y0, by)
        if iw > 0 and ih > 0 and iw * ih > _MAX_OVERLAP * min(w * h, bw * bh):
            return False
    return True


def _make_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[dict]]:
    """One image uint8 [size, size, 3] and its objects (category index, xywh box, pixel area)."""
    img = _background(rng, size)
    n = int(rng.integers(1, 9))
    objects, boxes, large = [], [], 0
    for _ in range(n):
        for _attempt in range(20):
            bucket = int(rng.choice(3, p=_SIDE_PROBS))
            if bucket == 2 and large >= 2:
                bucket = 1
            lo, hi = _SIDE_RANGES[bucket]
            side = rng.uniform(lo, hi) * size
            aspect = rng.uniform(0.75, 1.33)
            w = max(6, int(round(side * np.sqrt(aspect))))
            h = max(6, int(round(side / np.sqrt(aspect))))
            w, h = min(w, size - 2), min(h, size - 2)
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            if _overlap_ok((x0, y0, w, h), boxes):
                break
        else:
            continue
        cls = int(rng.integers(len(CLASSES)))
        mask_img = Image.new("L", (w, h), 0)  # drawn in box coordinates
        _draw_shape(ImageDraw.Draw(mask_img), CLASSES[cls], 0, 0, w, h, rng)
        mask = np.asarray(mask_img) > 0
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            continue
        region = img[y0:y0 + h, x0:x0 + w]
        region[mask] = _colour(rng, region.reshape(-1, 3).mean(0))
        bx, by = x0 + int(xs.min()), y0 + int(ys.min())
        xs, ys = xs + x0, ys + y0
        bw, bh = int(xs.max()) + 1 - bx, int(ys.max()) + 1 - by
        boxes.append((x0, y0, w, h))
        large += bucket == 2
        objects.append({"cls": cls, "bbox": [float(bx), float(by), float(bw), float(bh)], "area": float(bw * bh)})
    if not objects:  # cannot happen with 20 attempts on an empty canvas, but keep the invariant
        raise RuntimeError("synthetic generator placed no object")
    img += rng.standard_normal(img.shape, dtype=np.float32) * 5  # pixel noise everywhere
    return np.clip(img, 0, 255).round().astype(np.uint8), objects


def _params(num_train: int, num_val: int, size: int, seed: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "num_train": num_train, "num_val": num_val,
            "size": size, "seed": seed, "classes": list(CLASSES)}


def _paths(root: Path) -> dict:
    return {"root": str(root), "image_dir": str(root / "images"), "train": str(root / "train.json"),
            "val": str(root / "val.json"), "meta": str(root / "meta.json")}


def _is_complete(root: Path, params: dict) -> bool:
    try:
        meta = json.loads((root / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return meta == params and (root / "train.json").is_file() and (root / "val.json").is_file()


def _write(tmp: Path, params: dict) -> None:
    rng = np.random.default_rng(params["seed"])
    (tmp / "images").mkdir(parents=True)
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CLASSES)]
    image_id = ann_id = 0
    for split, count in (("train", params["num_train"]), ("val", params["num_val"])):
        images, anns = [], []
        for k in range(count):
            image_id += 1
            arr, objects = _make_image(rng, params["size"])
            name = f"{split}_{k:06d}.png"
            Image.fromarray(arr).save(tmp / "images" / name, compress_level=1)
            images.append({"id": image_id, "file_name": name, "width": params["size"], "height": params["size"]})
            for o in objects:
                ann_id += 1
                anns.append({"id": ann_id, "image_id": image_id, "category_id": o["cls"] + 1, "bbox": o["bbox"],
                             "area": o["area"], "iscrowd": 0})
        doc = {"info": {"description": "detrdistill synthetic shapes", **{k: params[k] for k in ("seed", "size")}},
               "images": images, "annotations": anns, "categories": categories}
        (tmp / f"{split}.json").write_text(json.dumps(doc))
    (tmp / "meta.json").write_text(json.dumps(params, indent=1))  # written last: marks completeness


def make_synthetic_coco(out_dir: str | Path, num_train: int = 160, num_val: int = 40, size: int = 256,
                        seed: int = 0) -> dict:
    """Generate (or reuse) the synthetic dataset in ``out_dir``.

    Returns dict(root, image_dir, train, val, meta) of path strings. Raises :class:`DatasetError`
    when ``out_dir`` exists, is not empty and is not a synthetic dataset (it is never deleted then).
    """
    if num_train < 1 or num_val < 1:
        raise DatasetError(f"synthetic data: need at least one train and one val image, got {num_train}/{num_val}")
    if size < 64:
        raise DatasetError(f"synthetic data: size must be at least 64 px, got {size}")
    root = Path(out_dir)
    params = _params(num_train, num_val, size, seed)
    if _is_complete(root, params):
        return _paths(root)
    if root.exists() and any(root.iterdir()) and not (root / "meta.json").is_file():
        raise DatasetError(f"{root}: folder exists and is not a synthetic dataset (no meta.json); "
                           "choose an empty or new folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        _write(tmp / "d", params)
        if root.exists():  # an older / different synthetic set: move it aside, then drop it
            old = tmp / "old"
            os.replace(root, old)
        try:
            os.replace(tmp / "d", root)
        except OSError:
            if not _is_complete(root, params):  # another process won the race with a different set
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _paths(root)
