"""COCO detection dataset for DETR-family training: validated, cleaned, contiguous labels.

    ds = CocoDetection("bccd/train.json", "bccd/images", transforms=build_transforms(cfg.data, True))
    pixel_values, target = ds[0]
    loader = DataLoader(ds, batch_size=4, collate_fn=collate_fn)

``target`` (per image, T objects):
    class_labels: LongTensor[T]     contiguous labels 0..C-1 (``ds.label2cat`` maps back to COCO ids)
    boxes:        FloatTensor[T, 4] normalised (cx, cy, w, h) relative to the transformed, un-padded image
    image_id:     int               COCO image id
    orig_size:    LongTensor[2]     (h, w) of the file
    size:         LongTensor[2]     (h, w) after the transforms
Crowd annotations (``iscrowd=1``) are left out of targets but kept in :attr:`CocoDetection.coco_gt`.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import defaultdict
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from torch.utils.data import Dataset

from .image_cache import ImageCache
from .images import decode_rgb
from .transforms import ToTensorNormalize
from .policy import apply_policy
from .validate import DatasetError, load_coco_json, validate_coco_dict, validate_command

log = logging.getLogger(__name__)


def load_rgb(path: str | Path, allow_truncated: bool = False) -> Image.Image:
    """Open any image file as 8-bit RGB, EXIF orientation applied (:func:`~detrdistill.data.images.decode_rgb`).

    ``allow_truncated`` decodes a truncated file with the missing part filled in (PIL's
    ``LOAD_TRUNCATED_IMAGES``). Raises :class:`DatasetError` naming the file when it cannot be decoded.
    """
    try:
        return decode_rgb(path, allow_truncated=allow_truncated)
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found") from None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
        raise DatasetError(f"{path}: cannot decode image ({type(e).__name__}: {e}); "
                           "run `detrdistill data validate` or remove it from the json") from None


class CocoDetection(Dataset):
    """Validated COCO detection dataset (see module docstring for the item format).

    ann_file / image_dir: the COCO json and the folder its ``file_name`` entries are relative to
    transforms:   callable ``(PIL.Image, target) -> (FloatTensor[3,H,W], target)`` ending with
                  :class:`ToTensorNormalize`; None = no augmentation, just tensor + normalise
    defects:      "repair" | "skip" | "error", see :func:`~detrdistill.data.policy.apply_policy`
    check_images: decode every image file fully while validating (as ``__getitem__`` will), so a file
                  that cannot be read is dropped or refused here, before the first step (files that decoded
                  cleanly before and are unchanged are not decoded again: :mod:`.decode_cache`)
    progress:     show a progress bar while decoding (default: for 1000 images or more)
    cache_gib:    GiB of decoded images this process keeps in memory (:mod:`.image_cache`; 0 = none): the same
                  pixels, decoded once per process instead of once per epoch

    Attributes: ``cat_ids`` (sorted COCO category ids), ``label2cat``, ``cat2label``, ``id2label``
    (contiguous label -> name), ``report`` (the validation report), ``changes`` (policy changes),
    ``truncated_ids`` (kept truncated images, read with truncation tolerance; ``repair`` only).
    Images with no annotations are kept (empty ground truth is valid for DETR).
    """

    def __init__(self, ann_file: str | Path, image_dir: str | Path, transforms: Callable | None = None,
                 defects: str = "repair", check_images: bool = True, progress: bool | None = None,
                 cache_gib: float = 0.0):
        self.ann_file, self.image_dir = str(ann_file), Path(image_dir)
        self.image_cache = ImageCache.from_gib(cache_gib)
        raw = load_coco_json(ann_file)
        progress = len(raw["images"]) >= 1000 if progress is None else progress
        self.report = validate_coco_dict(raw, self.ann_file, image_dir, check_images, progress, use_cache=True)
        self.coco, self.changes = apply_policy(raw, self.report, defects)
        kept = {im["id"] for im in self.coco["images"]}
        self.truncated_ids = {d.image_id for d in self.report.defects
                              if d.kind == "truncated_image" and d.image_id in kept}
        if self.truncated_ids:
            log.warning("%s: %d truncated image(s) kept (data.defects=repair): they are decoded with PIL's "
                        "truncation tolerance, the missing part filled in; data.defects=skip drops them",
                        self.ann_file, len(self.truncated_ids))
        if self.changes:
            verb = "repaired" if defects == "repair" else "skipped"
            log.warning("%s: %d dataset defect(s) %s (%s); run `%s` for details",
                        self.ann_file, len(self.changes), verb,
                        ", ".join(f"{k}={v}" for k, v in self.report.counts().items() if k != "empty_image"),
                        validate_command(self.ann_file, self.image_dir))
        self.transforms = transforms if transforms is not None else ToTensorNormalize()

        cats = self.coco["categories"]
        self.cat_ids: list[int] = sorted(c["id"] for c in cats)
        self.cat2label = {c: i for i, c in enumerate(self.cat_ids)}
        self.label2cat = {i: c for c, i in self.cat2label.items()}
        names = {c["id"]: c["name"] for c in cats}
        self.id2label = {i: names[c] for i, c in self.label2cat.items()}
        self.images: list[dict] = self.coco["images"]
        self.ids: list = [im["id"] for im in self.images]
        self._anns: dict = defaultdict(list)
        for a in self.coco["annotations"]:
            self._anns[a["image_id"]].append(a)
        self._coco_gt = None
        if not self.images:
            raise DatasetError(f"{self.ann_file}: no usable images left (defects={defects}); "
                               f"{self.report.summary()}")

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def image_path(self, i: int) -> Path:
        return self.image_dir / self.images[i]["file_name"]

    def decoded(self, i: int) -> Image.Image:
        """Image ``i`` as 8-bit RGB, from the in-memory cache when there is one (see ``cache_gib``)."""
        info = self.images[i]

        def load() -> Image.Image:
            return load_rgb(self.image_path(i), allow_truncated=info["id"] in self.truncated_ids)

        return self.image_cache.get(i, load) if self.image_cache is not None else load()

    def raw_target(self, i: int) -> dict:
        """Target before transforms: absolute xyxy ``boxes`` FloatTensor[T, 4], ``class_labels``,
        ``image_id``, ``orig_size`` (h, w from the json, which validation matched to the file)."""
        info = self.images[i]
        anns = [a for a in self._anns[info["id"]] if not a.get("iscrowd", 0)]
        boxes = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        labels = torch.tensor([self.cat2label[a["category_id"]] for a in anns], dtype=torch.long)
        return {"boxes": boxes, "class_labels": labels, "image_id": info["id"],
                "orig_size": torch.tensor([info["height"], info["width"]], dtype=torch.long)}

    def __getitem__(self, i: int):
        info = self.images[i]
        img = self.decoded(i)
        if img.size != (info["width"], info["height"]):
            raise DatasetError(f"{self.image_path(i)}: file is {img.width}x{img.height} but {self.ann_file} "
                               f"says {info['width']}x{info['height']} (the file changed since the dataset was "
                               f"loaded?); run `{validate_command(self.ann_file, self.image_dir)}`")
        target = self.raw_target(i)
        w, h = img.size
        b = target["boxes"]
        target["boxes"] = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h),
                                       b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1)
        pixel_values, target = self.transforms(img, target)
        if not isinstance(pixel_values, torch.Tensor) or "size" not in target:
            raise TypeError("CocoDetection transforms must end with ToTensorNormalize()")
        return pixel_values, target

    @property
    def coco_gt(self):
        """``pycocotools.coco.COCO`` over the cleaned annotations (built once, in memory, silently)."""
        if self._coco_gt is None:
            from pycocotools.coco import COCO

            data = copy.deepcopy(self.coco)
            for a in data["annotations"]:
                a.setdefault("area", float(a["bbox"][2] * a["bbox"][3]))
                a.setdefault("iscrowd", 0)
            data.setdefault("info", {})
            data.setdefault("licenses", [])
            gt = COCO()
            gt.dataset = data
            with contextlib.redirect_stdout(io.StringIO()):
                gt.createIndex()
            self._coco_gt = gt
        return self._coco_gt


def collate_fn(batch: list, size_divisor: int = 32) -> dict:
    """Stack ``(pixel_values [3,h,w], target)`` items into a padded batch.

    Returns dict(pixel_values FloatTensor[B, 3, Hmax, Wmax] zero-padded bottom/right,
    pixel_mask LongTensor[B, Hmax, Wmax] with 1 on real pixels, labels list of B target dicts).
    Hmax/Wmax are rounded up to a multiple of ``size_divisor`` (1 or 0 disables).
    Use ``functools.partial(collate_fn, size_divisor=...)`` for another divisor in a DataLoader.
    """
    if not batch:
        raise ValueError("collate_fn: empty batch")
    images = [b[0] for b in batch]
    hmax = max(x.shape[-2] for x in images)
    wmax = max(x.shape[-1] for x in images)
    if size_divisor and size_divisor > 1:
        hmax = -(-hmax // size_divisor) * size_divisor
        wmax = -(-wmax // size_divisor) * size_divisor
    pixel_values = images[0].new_zeros((len(images), images[0].shape[0], hmax, wmax))
    pixel_mask = torch.zeros((len(images), hmax, wmax), dtype=torch.long)
    for k, x in enumerate(images):
        h, w = x.shape[-2:]
        pixel_values[k, :, :h, :w] = x
        pixel_mask[k, :h, :w] = 1
    return {"pixel_values": pixel_values, "pixel_mask": pixel_mask, "labels": [b[1] for b in batch]}
