"""Decoded training images kept in memory, so each file is decoded once per loader process, not once per epoch.

JPEG decoding is about a quarter of the CPU data pipeline (a 640x480 bccd image: ~2 ms of ~8 ms; see
``docs/performance.md``). On small datasets trained for many epochs on few cores, keeping the decoded images
saves that time at every epoch after the first. The pixels are exactly the decoded file's: a cached image is the
same RGB image :func:`~detrdistill.data.coco.load_rgb` returns, so training with or without the cache sees
identical batches (and a resumed run stays bit-exact).

The budget (``data.cache_images`` GiB) is per process holding a dataset: each DataLoader worker fills its own
cache as it reads images (the training loader's workers live for the whole run). Images that do not fit in the
budget are decoded from disk every time; nothing is evicted. 0 turns the cache off. Entries are keyed on the
decoding rule (:data:`~detrdistill.data.images.DECODE_RULE`) as well as the caller's key, so pixels decoded by
another rule are never handed out.
"""
from __future__ import annotations

from typing import Callable, Hashable

from PIL import Image

from .images import DECODE_RULE

__all__ = ["ImageCache"]


class ImageCache:
    """``get(key, load)``: a copy of the cached RGB image for ``key``, else ``load()`` (cached while the total
    decoded size stays within ``budget_bytes``).  Callers get a copy, so a transform that draws on its image in
    place cannot change what the next epoch reads."""

    def __init__(self, budget_bytes: int):
        if budget_bytes < 0:
            raise ValueError(f"image cache budget must be >= 0 bytes, got {budget_bytes}")
        self.budget = int(budget_bytes)
        self.used = 0
        self.images: dict[Hashable, Image.Image] = {}
        self.hits = self.misses = 0

    @classmethod
    def from_gib(cls, gib: float) -> "ImageCache | None":
        """None when ``gib`` is 0 (no cache)."""
        return cls(int(gib * 2**30)) if gib > 0 else None

    @staticmethod
    def nbytes(img: Image.Image) -> int:
        return img.width * img.height * len(img.getbands())

    def get(self, key: Hashable, load: Callable[[], Image.Image]) -> Image.Image:
        key = (DECODE_RULE, key)
        img = self.images.get(key)
        if img is not None:
            self.hits += 1
            return img.copy()
        self.misses += 1
        img = load()
        size = self.nbytes(img)
        if self.used + size <= self.budget:
            img.load()  # PIL images are lazy: keep the pixels, not a file handle
            self.images[key] = img
            self.used += size
            return img.copy()
        return img

    def __len__(self) -> int:
        return len(self.images)

    def __getstate__(self) -> dict:
        # a worker started with ``spawn`` gets the budget, not the parent's images (each process fills its own)
        state = dict(self.__dict__)
        state.update(images={}, used=0, hits=0, misses=0)
        return state
