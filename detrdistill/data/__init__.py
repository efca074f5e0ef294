"""Data: COCO validation and loading, DETR-style augmentations, a synthetic shapes set.

    ds = build_dataset(cfg.data.train, cfg.data, train=True)
    loader = DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_fn)
"""
from __future__ import annotations

from .coco import CocoDetection, collate_fn, load_rgb
from .synth import CLASSES as SYNTH_CLASSES
from .synth import make_synthetic_coco
from .transforms import (IMAGENET_MEAN, IMAGENET_STD, Compose, RandomHorizontalFlip, RandomResize,
                         RandomSizeCrop, ToTensorNormalize,
                         build_transforms, denormalize)
from .policy import apply_policy
from .validate import (KINDS, WARNING_KINDS, DatasetError, Defect, ValidationReport,
                       load_coco_json, validate_coco, validate_coco_dict)


def build_dataset(split, data_cfg, train: bool) -> CocoDetection:
    """:class:`CocoDetection` for one :class:`~detrdistill.config.SplitConfig`, with the train or eval
    transforms of ``data_cfg`` (a :class:`~detrdistill.config.DataConfig`), its defect policy and, for training,
    its in-memory image cache (``data.cache_images``; evaluation workers do not live long enough to reuse one)."""
    if split is None:
        raise DatasetError("data split is not configured: set data.train / data.val "
                           "(ann_file and image_dir) or data.synthetic=true")
    return CocoDetection(split.ann_file, split.image_dir, transforms=build_transforms(data_cfg, train),
                         defects=data_cfg.defects, cache_gib=data_cfg.cache_images if train else 0.0)


__all__ = [
    "CocoDetection", "collate_fn", "load_rgb", "build_dataset",
    "make_synthetic_coco", "SYNTH_CLASSES",
    "Compose", "RandomHorizontalFlip", "RandomResize", "RandomSizeCrop", "ToTensorNormalize",
    "build_transforms", "denormalize", "IMAGENET_MEAN", "IMAGENET_STD",
    "KINDS", "WARNING_KINDS", "DatasetError", "Defect", "ValidationReport", "apply_policy", "load_coco_json",
    "validate_coco", "validate_coco_dict",
]
