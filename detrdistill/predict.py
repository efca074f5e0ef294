"""``detrdistill predict MODEL IMAGE_OR_DIR... --out DIR``: detections drawn on images + COCO results.

For every image: ``<out>/<stem>.png`` with boxes, class names and scores drawn, and one entry per
detection in ``<out>/predictions.json`` (COCO results format: ``image_id`` (1-based order of the
images), ``category_id`` (the model's label index), ``bbox`` [x, y, w, h] in pixels, ``score``; plus
``file_name`` and ``category_name`` for reading). Pixels are prepared by the model directory's saved
image processor (the one matching evaluation), or, for older runs without one, by the eval transforms of
the run's ``config.yaml``; detections come from the same post-processing as evaluation.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from detrdistill.errors import DetrDistillError

log = logging.getLogger("detrdistill")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


class PredictError(DetrDistillError):
    """A missing model directory, a missing path or an unreadable image."""


@dataclass
class PredictResult:
    """What ``predict`` wrote: the drawn images, the results file and the number of detections."""
    images: list[Path] = field(default_factory=list)
    predictions_file: Path | None = None
    num_detections: int = 0


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (``config.json``), a run directory holding ``model/``, or a Hugging Face hub id (its
    snapshot in the hub cache, see :func:`detrdistill.models.pretrained.hub_snapshot_dir`)."""
    p = Path(path).expanduser()
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    from detrdistill.models.pretrained import hub_snapshot_dir, looks_like_hub_id
    if not p.exists() and looks_like_hub_id(str(path)):
        return hub_snapshot_dir(str(path), what="MODEL")
    raise PredictError(f"{p}: no model here (no config.json in it or in {p / 'model'}); "
                       "give a run's model/ folder")


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """Files as given, and the images (by suffix, sorted, not recursive) of every folder."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            files.append(p)
        else:
            raise PredictError(f"{p}: no such image or folder")
    if not files:
        raise PredictError(f"no images found in {', '.join(str(i) for i in inputs)} "
                           f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return files


def open_rgb(path: Path, header_only: bool = False):
    """The image as RGB, decoded by the one rule of training and transformers' ``load_image`` (EXIF orientation
    applied: :func:`detrdistill.data.images.decode_rgb`), or a one-line :class:`PredictError` (a damaged file, a
    decompression bomb ...). ``header_only``: just check that it opens (returns its stored size)."""
    from PIL import Image

    from detrdistill.data.images import decode_rgb

    try:
        if header_only:
            with Image.open(path) as img:
                return img.size
        return decode_rgb(path)
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        first = str(e).splitlines()[0] if str(e) else "unreadable"
        raise PredictError(f"{path}: cannot read this image ({type(e).__name__}: {first})") from None


def load_image_processor(model_dir: Path, family: str):
    """The saved processor, else one built from the run's ``config.yaml`` (runs exported before it was saved)."""
    from detrdistill.export.processor import build_image_processor

    if (model_dir / "preprocessor_config.json").is_file():
        return load_saved_processor(model_dir)
    run_cfg = model_dir.parent / "config.yaml"
    if not run_cfg.is_file():
        raise PredictError(f"{model_dir}: no preprocessor_config.json and no run config {run_cfg} to rebuild it from")
    from detrdistill.config import load_config
    data = load_config(run_cfg).data
    log.info("%s has no image processor; using the eval transforms of %s", model_dir, run_cfg)
    return build_image_processor(family, data.eval_size, data.max_size)


def load_saved_processor(model_dir: Path):
    """``preprocessor_config.json`` through ``AutoImageProcessor`` with ``trust_remote_code=False``: a processor
    that names code shipped in the folder (``auto_map``) is refused in one line, never run."""
    from transformers import AutoImageProcessor

    try:
        return AutoImageProcessor.from_pretrained(str(model_dir), trust_remote_code=False)
    except ValueError as e:
        if "trust_remote_code" not in str(e) and "custom code" not in str(e):
            raise
        raise PredictError(f"{model_dir / 'preprocessor_config.json'}: names custom code shipped in the model folder "
                           "(auto_map); detrdistill never runs a model folder's code. Remove auto_map to use the "
                           "standard image processor") from None


def write_png(png: Path, image) -> None:
    """A drawn image, written atomically (a full disk is one line and leaves no partial file)."""
    import io

    from detrdistill.io_atomic import write_atomic

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    write_atomic(png, buf.getvalue())


def write_predictions(out_dir: Path, records: list[dict]) -> Path:
    """``predictions.json``, written atomically; returns its path."""
    from detrdistill.io_atomic import write_atomic

    return write_atomic(out_dir / "predictions.json", json.dumps(records, indent=1))


def claim_predict_output(model_dir: Path, inputs: list[str | Path], out_dir: str | Path):
    """Lock ``out_dir`` for this command and refuse it when it equals, contains or lies inside the model folder or
    one of the images / image folders given (it would overwrite them); see :mod:`detrdistill.output_folder`."""
    from detrdistill.output_folder import claim_output

    return claim_output(out_dir, [("model", model_dir), *(("images", p) for p in inputs)], "--out")


@torch.no_grad()
def detect(model, processor, activation: str, image) -> dict[str, torch.Tensor]:
    """One RGB PIL image -> dict(scores [K], labels [K], boxes [K, 4] xyxy pixels), top-100 by score."""
    from detrdistill.engine.evaluator import postprocess

    batch = processor(images=image, return_tensors="pt")
    kwargs = {"pixel_values": batch["pixel_values"]}
    if "pixel_mask" in batch:
        kwargs["pixel_mask"] = batch["pixel_mask"]
    out = model(**kwargs)
    sizes = torch.tensor([[image.height, image.width]])
    return postprocess(out.logits, out.pred_boxes, sizes, activation)[0]


def class_colour(label: int) -> tuple[int, int, int]:
    """A distinct, stable colour per class (tab10)."""
    tab10 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
             (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
    return tab10[label % len(tab10)]


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: scalable default font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def draw_detections(image, det: dict[str, torch.Tensor], id2label: dict[int, str]):
    """A copy of ``image`` with each box outlined and labelled ``name score``."""
    from PIL import ImageDraw

    canvas = image.copy()
    draw = ImageDraw.Draw(canvas)
    width = max(1, round(min(canvas.size) / 200))
    font = _font(max(11, round(min(canvas.size) / 32)))
    for score, label, box in zip(det["scores"].tolist(), det["labels"].tolist(), det["boxes"].tolist()):
        colour = class_colour(int(label))
        draw.rectangle(box, outline=colour, width=width)
        text = f"{id2label.get(int(label), label)} {score:.2f}"
        left, top, right, bottom = draw.textbbox((box[0], box[1]), text, font=font)
        y = box[1] - (bottom - top) - 2 if box[1] - (bottom - top) - 2 >= 0 else box[1]
        draw.rectangle((box[0], y, box[0] + right - left + 4, y + bottom - top + 2), fill=colour)
        draw.text((box[0] + 2, y), text, fill=(255, 255, 255), font=font)
    return canvas


def _unique_png(out_dir: Path, stem: str, used: set[str]) -> Path:
    name, k = f"{stem}.png", 1
    while name in used:
        name, k = f"{stem}_{k}.png", k + 1
    used.add(name)
    return out_dir / name


def predict(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
            progress: bool = True) -> PredictResult:
    """Detect objects in ``inputs`` (images and folders) and write drawn PNGs + predictions.json to ``out_dir``
    (claimed first: :func:`claim_predict_output`)."""
    model_dir = resolve_model_dir(model_dir)
    with claim_predict_output(model_dir, inputs, out_dir):
        return _predict(model_dir, inputs, out_dir, threshold, progress)


def _predict(model_dir: str | Path, inputs: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
             progress: bool = True) -> PredictResult:
    from detrdistill.models.adapters import adapter_class
    from detrdistill.models.build import family_of_model_type, load_detector
    from detrdistill.progress import progress_bar

    if not 0.0 <= threshold <= 1.0:
        raise PredictError(f"--threshold must be in [0, 1], got {threshold}")
    model_dir = resolve_model_dir(model_dir)
    files = collect_images(inputs)
    for f in files:  # fail on an unreadable file before any work
        open_rgb(f, header_only=True)
    model = load_detector(model_dir).eval()
    family = family_of_model_type(model.config.model_type)
    activation = adapter_class(family).class_activation
    processor = load_image_processor(model_dir, family)
    id2label = {int(k): v for k, v in model.config.id2label.items()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, records, used = PredictResult(), [], set()
    for image_id, path in enumerate(progress_bar(files, desc="predict", disable=not progress), start=1):
        image = open_rgb(path)
        det = detect(model, processor, activation, image)
        keep = det["scores"] >= threshold
        det = {k: v[keep] for k, v in det.items()}
        png = _unique_png(out_dir, path.stem, used)
        write_png(png, draw_detections(image, det, id2label))
        result.images.append(png)
        records += _coco_records(det, image_id, path, id2label)
    result.num_detections = len(records)
    result.predictions_file = write_predictions(out_dir, records)
    return result


def _coco_records(det: dict[str, torch.Tensor], image_id: int, path: Path, id2label: dict[int, str]) -> list[dict]:
    out = []
    for score, label, (x0, y0, x1, y1) in zip(det["scores"].tolist(), det["labels"].tolist(), det["boxes"].tolist()):
        out.append({"image_id": image_id, "file_name": str(path), "category_id": int(label),
                    "category_name": id2label.get(int(label), str(label)),
                    "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(float(score), 5)})
    return out
