"""Decoding image files exactly as training reads them, and classifying the ones that fail.

:func:`decode_rgb` is the one decoding rule (:data:`DECODE_RULE`) of training and evaluation
(:func:`detrdistill.data.coco.load_rgb`), ``data validate`` (:func:`check_image_file`) and ``predict``, so
validation cannot pass a file training cannot read, and every command sees the same pixels:

* the EXIF orientation is applied (``PIL.ImageOps.exif_transpose``), as transformers' ``load_image`` (and so
  the ``pipeline`` a deployed model runs in) and every image viewer do: a phone photo stored sideways with
  orientation 6 is decoded upright, and its size is the displayed one (width and height swapped);
* then 8-bit RGB: grayscale, palette, CMYK as PIL converts them; 16-bit and float images scaled to 0..255
  (``load_image``'s plain ``convert("RGB")`` would clip them); transparent pixels composited on black
  (``load_image`` keeps the colour stored under them).

:func:`orient_box` maps a box drawn on the stored pixels into the displayed image (``data.defects=repair`` of an
``orientation_mismatch``, see :mod:`detrdistill.data.validate`).

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
from PIL import Image, ImageFile, ImageOps

_TOLERANCE_LOCK = threading.RLock()
DECODE_RULE = "exif-transpose+rgb/2"  # part of every cache key of decoded images: change it with the rule
ORIENTATION_TAG = 0x0112
SWAPS_SIDES = frozenset({5, 6, 7, 8})  # orientations that display the image with width and height swapped


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


def _decode_oriented(im: Image.Image) -> Image.Image:
    """Load ``im`` fully and apply its EXIF orientation in place (what ``load_image`` does)."""
    im.load()
    ImageOps.exif_transpose(im, in_place=True)
    return im


def decode_rgb(path: str | Path, allow_truncated: bool = False) -> Image.Image:
    """Fully decode ``path`` by the one rule (module docstring): EXIF orientation applied, then 8-bit RGB. Raises
    whatever PIL raises; ``allow_truncated`` decodes a truncated file with the missing part filled in."""
    ctx = truncation_tolerated(True) if allow_truncated else contextlib.nullcontext()
    with ctx, Image.open(path) as im:
        return _to_rgb(_decode_oriented(im))


def exif_orientation(path: str | Path) -> int:
    """The file's EXIF orientation (1..8; 1 when it has none or it cannot be read), from its header only."""
    try:
        with Image.open(path) as im:
            value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # PIL raises many kinds on damaged files; those are reported by the decode itself
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def orient_box(box: list[float], stored_size: tuple[int, int], orientation: int) -> list[float]:
    """A box ``[x, y, w, h]`` on the stored pixels (``stored_size`` = (W, H)) -> the same box on the image as
    displayed under EXIF ``orientation`` (what :func:`decode_rgb` returns)."""
    W, H = stored_size
    x0, y0, w, h = box
    x1, y1 = x0 + w, y0 + h
    point = {1: lambda x, y: (x, y), 2: lambda x, y: (W - x, y), 3: lambda x, y: (W - x, H - y),
             4: lambda x, y: (x, H - y), 5: lambda x, y: (y, x), 6: lambda x, y: (H - y, x),
             7: lambda x, y: (H - y, W - x), 8: lambda x, y: (y, W - x)}[orientation]
    (a, b), (c, d) = point(x0, y0), point(x1, y1)
    return [min(a, c), min(b, d), abs(c - a), abs(d - b)]


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
            size = _decode_oriented(im).size  # the displayed size, as training decodes it
        return size, None, None
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        return None, "undecoded", _reason(e)


def classify_failure(path: Path, reason: str) -> tuple[tuple[int, int] | None, str, str]:
    """A file that failed :func:`check_image_file`: ``truncated_image`` with its size when it decodes
    under PIL's truncation tolerance, else ``corrupt_image``."""
    try:
        with truncation_tolerated(True), Image.open(path) as im:
            size = _decode_oriented(im).size
        return size, "truncated_image", f"{path} is truncated ({reason}); it decodes only with the missing part " \
                                        "filled in"
    except Exception:
        return None, "corrupt_image", f"cannot decode {path} ({reason})"
