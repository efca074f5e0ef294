"""Detection augmentations on ``(PIL.Image, target)`` pairs, PIL + torch only.

During augmentation ``target`` holds

    boxes:        FloatTensor[T, 4] absolute (x0, y0, x1, y1) in pixels of the current image
    class_labels: LongTensor[T]
    (any other key, e.g. image_id / orig_size, is passed through untouched)

:class:`ToTensorNormalize` ends every pipeline: it returns ``(FloatTensor[3, H, W], target)`` with
``boxes`` as normalised (cx, cy, w, h) relative to the final (un-padded) image and ``size`` =
LongTensor[2] (h, w).

Randomness comes only from Python's ``random`` module (``random.random`` / ``randint`` /
``choice``), so ``random.seed(s)`` makes a pipeline deterministic; PyTorch's DataLoader seeds
``random`` in every worker, so workers draw different augmentations.
"""
from __future__ import annotations

import math
import random
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from detrdistill.ops.boxes import xyxy_to_cxcywh

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Target = dict


def _check_target(target: Target) -> None:
    b = target.get("boxes")
    if b is None or not isinstance(b, torch.Tensor) or b.ndim != 2 or b.shape[-1] != 4:
        raise ValueError("transform target needs 'boxes' as a FloatTensor[T, 4] of absolute xyxy")


class Compose:
    """Apply transforms in order: ``Compose([t1, t2])(img, target)``."""

    def __init__(self, transforms: Sequence[Callable]):
        self.transforms = list(transforms)

    def __call__(self, img, target: Target):
        for t in self.transforms:
            img, target = t(img, target)
        return img, target

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomHorizontalFlip:
    """Mirror left-right with probability ``p``; x0' = W - x1, x1' = W - x0."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, img: Image.Image, target: Target):
        if self.p <= 0 or random.random() >= self.p:
            return img, target
        return hflip(img, target)

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


def hflip(img: Image.Image, target: Target) -> tuple[Image.Image, Target]:
    """Deterministic horizontal flip of an image and its absolute xyxy boxes."""
    _check_target(target)
    w = img.width
    target = dict(target)
    b = target["boxes"]
    target["boxes"] = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=-1)
    return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), target


def resized_hw(h: int, w: int, short: int, max_size: int | None) -> tuple[int, int]:
    """DETR's rule: short side -> ``short`` unless that makes the long side exceed ``max_size``."""
    if max_size is not None:
        lo, hi = min(w, h), max(w, h)
        if hi / lo * short > max_size:
            short = int(round(max_size * lo / hi))
    if w < h:
        ow, oh = short, int(short * h / w)
    else:
        oh, ow = short, int(short * w / h)
    return max(oh, 1), max(ow, 1)


def resize(img: Image.Image, target: Target, short: int, max_size: int | None) -> tuple[Image.Image, Target]:
    """Resize (bilinear) so the short side is ``short`` (long side capped) and scale the boxes."""
    _check_target(target)
    w, h = img.size
    oh, ow = resized_hw(h, w, short, max_size)
    if (oh, ow) == (h, w):
        return img, target
    img = img.resize((ow, oh), Image.Resampling.BILINEAR)
    target = dict(target)
    scale = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=target["boxes"].dtype)
    target["boxes"] = target["boxes"] * scale
    return img, target


class RandomResize:
    """Short side drawn uniformly from ``min_sizes``, longest side at most ``max_size`` (DETR style)."""

    def __init__(self, min_sizes: Sequence[int], max_size: int | None = None):
        if not min_sizes:
            raise ValueError("RandomResize needs at least one size")
        self.min_sizes, self.max_size = list(min_sizes), max_size

    def __call__(self, img: Image.Image, target: Target):
        short = self.min_sizes[0] if len(self.min_sizes) == 1 else random.choice(self.min_sizes)
        return resize(img, target, short, self.max_size)

    def __repr__(self) -> str:
        return f"RandomResize({self.min_sizes}, max_size={self.max_size})"


def crop(img: Image.Image, target: Target, box: tuple[int, int, int, int], min_box: float = 1.0):
    """Crop to integer ``(x, y, w, h)``; boxes are shifted and clipped, those narrower or shorter
    than ``min_box`` pixels afterwards are dropped together with their labels."""
    _check_target(target)
    x, y, w, h = box
    target = dict(target)
    b = target["boxes"] - torch.tensor([x, y, x, y], dtype=target["boxes"].dtype)
    b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1)
    keep = ((b[:, 2] - b[:, 0]) >= min_box) & ((b[:, 3] - b[:, 1]) >= min_box)
    target["boxes"] = b[keep]
    target["class_labels"] = target["class_labels"][keep]
    return img.crop((x, y, x + w, y + h)), target


class RandomSizeCrop:
    """With probability ``p`` crop a random window whose sides are ``[min_frac, 1]`` of the image's.

    Boxes are clipped to the window; those left under ``min_box`` px wide/high are dropped. If the
    image has objects, a window that would drop all of them is redrawn (up to ``attempts`` times)
    and the image stays uncropped when none keeps an object.
    """

    def __init__(self, p: float = 0.5, min_frac: float = 0.5, attempts: int = 10, min_box: float = 1.0):
        if not 0 < min_frac <= 1:
            raise ValueError(f"RandomSizeCrop: min_frac must be in (0, 1], got {min_frac}")
        self.p, self.min_frac, self.attempts, self.min_box = p, min_frac, attempts, min_box

    def __call__(self, img: Image.Image, target: Target):
        if self.p <= 0 or random.random() >= self.p:
            return img, target
        W, H = img.size
        had = len(target["boxes"]) > 0
        for _ in range(self.attempts):
            w = random.randint(min(W, max(1, math.ceil(self.min_frac * W))), W)
            h = random.randint(min(H, max(1, math.ceil(self.min_frac * H))), H)
            x, y = random.randint(0, W - w), random.randint(0, H - h)
            out_img, out_t = crop(img, target, (x, y, w, h), self.min_box)
            if not had or len(out_t["boxes"]) > 0:
                return out_img, out_t
        return img, target

    def __repr__(self) -> str:
        return f"RandomSizeCrop(p={self.p}, min_frac={self.min_frac})"


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """RGB PIL image -> FloatTensor[3, H, W] in [0, 1]."""
    if img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.array(img, dtype=np.uint8)  # one writable copy of PIL's buffer
    # channels first while still uint8, so the float ops below run on a contiguous tensor (about 2x faster)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().float().div_(255.0)


class ToTensorNormalize:
    """PIL -> ImageNet-normalised FloatTensor[3, H, W]; boxes -> normalised cxcywh in [0, 1]; sets ``size``."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def __call__(self, img: Image.Image, target: Target):
        _check_target(target)
        x = (pil_to_tensor(img) - self.mean) / self.std
        h, w = x.shape[-2:]
        target = dict(target)
        b = target["boxes"].float()
        b = torch.stack([b[:, 0].clamp(0, w), b[:, 1].clamp(0, h), b[:, 2].clamp(0, w), b[:, 3].clamp(0, h)], -1)
        target["boxes"] = (xyxy_to_cxcywh(b) / torch.tensor([w, h, w, h], dtype=torch.float32)).reshape(-1, 4)
        target["class_labels"] = torch.as_tensor(target["class_labels"], dtype=torch.long).reshape(-1)
        target["size"] = torch.tensor([h, w], dtype=torch.long)
        return x, target

    def __repr__(self) -> str:
        return "ToTensorNormalize()"


def denormalize(x: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """Inverse of the normalisation: [..., 3, H, W] -> values in [0, 1] (for plots and tests)."""
    m = torch.tensor(mean, device=x.device).view(3, 1, 1)
    s = torch.tensor(std, device=x.device).view(3, 1, 1)
    return (x * s + m).clamp(0, 1)


def build_transforms(data_cfg, train: bool) -> Compose:
    """Pipeline from a :class:`~detrdistill.config.DataConfig`.

    train: hflip(``hflip``) -> crop(``crop``, ``crop_min``) -> resize(``min_size``, ``max_size``) -> tensor
    eval:  resize(``eval_size``, ``max_size``) -> tensor
    """
    if train:
        return Compose([RandomHorizontalFlip(data_cfg.hflip), RandomSizeCrop(data_cfg.crop, data_cfg.crop_min),
                        RandomResize(data_cfg.min_size, data_cfg.max_size), ToTensorNormalize()])
    return Compose([RandomResize([data_cfg.eval_size], data_cfg.max_size), ToTensorNormalize()])
