"""Decoding image files exactly as training reads them, and classifying the ones that fail.

:func:`decode_rgb` is the one function both training (:func:`detrdistill.data.coco.load_rgb`) and
``data validate`` (:func:`check_image_file`) use, so validation cannot pass a file training cannot read.

Truncated files: a JPEG (or PNG) whose last bytes are missing passes PIL's header read and
``verify()`` but fails a full decode ("image file is truncated"). With PIL's
``ImageFile.LOAD_TRUNCATED_IMAGES`` the decoder fills in the missing rows instead and the file
decodes. :func:`check_image_file` reports such a file as ``truncated_image`` (decodes only with that
tolerance) and a file that does not decode even so as ``corrupt_image``.
"""
from __future__ import annotations

import contextlib
import threading
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile

_TOLERANCE_LOCK = threading.RLock()


@contextlib.contextmanager
def truncation_tolerated(on: bool = True):
    """Set PIL's process-wide ``LOAD_TRUNCATED_IMAGES`` to ``on`` for the block (serialised by a lock,
    so concurrent decoders in this process never see each other's setting change mid-decode)."""
    with _TOLERANCE_LOCK:
        before = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = on
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = before


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        im = Image.fromarray((arr / top * 255).clip(0, 255).astype(np.uint8))
    if im.mode in ("P", "PA", "LA", "RGBA", "La", "RGBa"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (0, 0, 0, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB")


def decode_rgb(path: str | Path, allow_truncated: bool = False) -> Image.Image:
    """Fully decode ``path`` to 8-bit RGB (grayscale, palette, RGBA, CMYK, 16-bit all work). Raises
    whatever PIL raises; ``allow_truncated`` decodes a truncated file with the missing part filled in."""
    ctx = truncation_tolerated(True) if allow_truncated else contextlib.nullcontext()
    with ctx, Image.open(path) as im:
        im.load()
        return _to_rgb(im)


def _reason(e: Exception) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'unreadable'}"


def check_image_file(path: Path) -> tuple[tuple[int, int] | None, str | None, str | None]:
    """Decode ``path`` fully (without truncation tolerance) as training would.

    Returns ``(size, kind, reason)``: ``(size, None, None)`` when it decodes; otherwise ``kind`` is
    ``missing_image``, ``empty_file`` or ``undecoded`` (a failure :func:`classify_failure` refines
    into ``truncated_image`` / ``corrupt_image``; that retry changes a process-wide PIL flag, so it
    runs serially after any parallel pass)."""
    try:
        if not path.is_file():
            return None, "missing_image", f"{path} not found"
        if path.stat().st_size == 0:
            return None, "empty_file", f"{path} is 0 bytes"
        with Image.open(path) as im:
            size = im.size
            im.load()
        return size, None, None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return None, "undecoded", _reason(e)


def classify_failure(path: Path, reason: str) -> tuple[tuple[int, int] | None, str, str]:
    """A file that failed :func:`check_image_file`: ``truncated_image`` with its size when it decodes
    under PIL's truncation tolerance, else ``corrupt_image``."""
    try:
        with truncation_tolerated(True), Image.open(path) as im:
            size = im.size
            im.load()
        return size, "truncated_image", f"{path} is truncated ({reason}); it decodes only with the missing part " \
                                        "filled in"
    except Exception:
        return None, "corrupt_image", f"cannot decode {path} ({reason})"
