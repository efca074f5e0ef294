"""``detrdistill predict MODEL IMAGES... --out DIR [--ann FILE]``: detections drawn on images + COCO results.

MODEL is a model folder (or a run folder holding ``model/``, or a hub id) run by PyTorch, or an exported
``.onnx`` file run by onnxruntime (pre- and post-processing read from its metadata: the same as the PyTorch
path). IMAGES are image files, folders (their images, by suffix, sorted, not recursive), glob patterns
(``"photos/*.jpg"``, ``"**"`` recursive) and ``.txt`` files listing one image path per line (relative to the
list's folder; blank lines and ``#`` comments ignored). A file that cannot be read as an image is skipped with
one warning (the CLI then exits 1, see :mod:`detrdistill.cli`); none readable is an error.

For every image: ``<out>/<stem>.png`` with boxes, class names and scores drawn, and one entry per
detection in ``<out>/predictions.json`` (COCO results format: ``image_id``, ``category_id``, ``bbox``
[x, y, w, h] in pixels, ``score``; plus ``file_name`` and ``category_name`` for reading). Ids: with
``--ann FILE`` (the COCO json of the images) the dataset's ``image_id`` of each file and ``category_id`` of
each class, and the COCO stats of the written results are printed (:mod:`detrdistill.predict_scoring`);
without it ``image_id`` is the 1-based position of the file among the inputs and ``category_id`` the dataset's
id the model folder records (``dataset_category_ids``, :mod:`detrdistill.export.category_ids`), else the
model's label index. Pixels are prepared by the model directory's saved image processor (the one matching
evaluation), or, for older runs without one, by the eval transforms of the run's ``config.yaml``; detections
come from the same post-processing as evaluation.
"""
from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from detrdistill.errors import PredictError

log = logging.getLogger("detrdistill")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


@dataclass
class PredictResult:
    """What ``predict`` wrote: the drawn images, the results file, the number of detections, the inputs skipped
    as unreadable (path, reason) and, with ``--ann``, the COCO stats of the results."""
    images: list[Path] = field(default_factory=list)
    predictions_file: Path | None = None
    num_detections: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    stats: dict[str, float] | None = None


def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (``config.json``), a run directory holding ``model/``, or a Hugging Face hub id (its
    snapshot in the hub cache, see :func:`detrdistill.models.pretrained.hub_snapshot_dir`)."""
    p = Path(path).expanduser()
    for cand in (p, p / "model"):
        if (cand / "config.json").is_file():
            return cand
    from detrdistill.models.pretrained import hub_snapshot_dir, reads_as_local_path
    if not p.exists() and reads_as_local_path(path) is None:
        return hub_snapshot_dir(str(path), what="MODEL")
    raise PredictError(f"{p}: no model here (no config.json in it or in {p / 'model'}); "
                       "give a run's model/ folder")


def collect_images(inputs: list[str | Path]) -> list[Path]:
    """The files of ``inputs`` in order, duplicates dropped: files as given (a ``.txt`` file: the paths it
    lists), the images of every folder (by suffix, sorted, not recursive) and of every glob pattern (sorted).
    A path that does not exist, or a pattern that matches no image, is a :class:`PredictError`."""
    files: list[Path] = []
    for item in inputs:
        files += _expand_input(item)
    if not files:
        raise PredictError(f"no images found in {', '.join(str(i) for i in inputs)} "
                           f"(looked for {', '.join(IMAGE_SUFFIXES)})")
    return list(dict.fromkeys(files))


def _is_image_name(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()


def _expand_input(item: str | Path, listed_in: Path | None = None) -> list[Path]:
    p = Path(item).expanduser()
    if listed_in is not None and not p.is_absolute():
        p = listed_in.parent / p
    if p.is_dir():
        return sorted(f for f in p.iterdir() if _is_image_name(f))
    if p.is_file():
        return _read_list_file(p) if p.suffix.lower() == ".txt" and listed_in is None else [p]
    if glob.has_magic(str(p)):
        matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
        images = [m for m in matches if _is_image_name(m)]
        if not images:
            raise PredictError(f"{item}: no image matches this pattern (looked for {', '.join(IMAGE_SUFFIXES)})")
        return images
    where = f" (listed in {listed_in})" if listed_in is not None else ""
    raise PredictError(f"{p}: no such image or folder{where}")


def _read_list_file(path: Path) -> list[Path]:
    """The images a ``.txt`` file lists (one path per line, relative to its folder; ``#`` comments)."""
    files: list[Path] = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            files += _expand_input(line, listed_in=path)
    return files


def readable_images(files: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """(the files whose image header opens, [(file, reason)] of the others); one warning per skipped file."""
    ok, skipped = [], []
    for f in files:
        try:
            open_rgb(f, header_only=True)
            ok.append(f)
        except PredictError as e:
            skipped.append((f, _skip_warning(f, e)))
    return ok, skipped


def _skip_warning(path: Path, error: Exception) -> str:
    reason = str(error).removeprefix(f"{path}: ")
    log.warning("skipped %s: %s", path, reason)
    return reason


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


@dataclass
class Predictor:
    """A model as ``predict`` runs it (PyTorch or onnxruntime): ``forward(pixel_values, pixel_mask)`` ->
    final (logits [B, N, C'], pred_boxes [B, N, 4]), its image processor, post-processing (activation, top_k),
    class names and the dataset's category id of each label (None when not recorded)."""
    forward: Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor]]
    processor: Any
    activation: str
    top_k: int
    id2label: dict[int, str]
    category_ids: dict[int, int] | None


def load_predictor(model: str | Path) -> Predictor:
    """A model folder / run folder / hub id (PyTorch), or an exported ``.onnx`` file (onnxruntime)."""
    from detrdistill.export.onnx_runtime import is_onnx_file

    return _onnx_predictor(Path(model)) if is_onnx_file(model) else _torch_predictor(model)


def _torch_predictor(model: str | Path) -> Predictor:
    from detrdistill.export.category_ids import category_ids_of
    from detrdistill.export.processor import load_image_processor
    from detrdistill.models.adapters.base import boxes_to_real_frame
    from detrdistill.models.build import load_detector
    from detrdistill.models.families import spec_of

    model_dir = resolve_model_dir(model)
    net = load_detector(model_dir).eval()
    spec = spec_of(net)
    processor = load_image_processor(model_dir, spec.name)
    post = spec.postprocessing
    reads_mask = "pixel_mask" in spec.capabilities

    def forward(pixel_values, pixel_mask):
        out = net(pixel_values=pixel_values, pixel_mask=pixel_mask)
        # a mask-blind model (RT-DETR, D-FINE, DEIMv2) predicts fractions of the padded input: make them the image's
        return out.logits, out.pred_boxes if reads_mask else boxes_to_real_frame(out.pred_boxes, pixel_mask)
    return Predictor(forward, processor, post.activation, post.top_k,
                     {int(k): v for k, v in net.config.id2label.items()}, category_ids_of(net.config))


def _onnx_predictor(path: Path) -> Predictor:
    from detrdistill.export.onnx_runtime import OnnxDetector

    if not path.is_file():
        raise PredictError(f"{path}: no such ONNX file")
    detector = OnnxDetector(path)
    info = detector.info
    return Predictor(detector.real_frame, detector.image_processor(), info.activation, info.top_k, info.id2label,
                     info.category_ids)


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
def detect(predictor: Predictor, image) -> dict[str, torch.Tensor]:
    """One RGB PIL image -> dict(scores [K], labels [K], boxes [K, 4] xyxy pixels), top-k by score."""
    from detrdistill.engine.evaluator import postprocess

    batch = predictor.processor(images=image, return_tensors="pt")
    logits, boxes = predictor.forward(batch["pixel_values"], batch.get("pixel_mask"))
    sizes = torch.tensor([[image.height, image.width]])
    return postprocess(logits, boxes, sizes, predictor.activation, predictor.top_k)[0]


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


def predict(model: str | Path, inputs: list[str | Path], out_dir: str | Path, threshold: float = 0.5,
            progress: bool = True, ann: str | Path | None = None) -> PredictResult:
    """Detect objects in ``inputs`` (images, folders, glob patterns, ``.txt`` lists) and write drawn PNGs +
    predictions.json to ``out_dir`` (claimed first: :func:`claim_predict_output`); unreadable files are skipped
    (``result.skipped``). ``model``: a model folder, run folder, hub id or ``.onnx`` file. ``ann``: the COCO json
    of the images (dataset ids + stats)."""
    from detrdistill.export.onnx_runtime import is_onnx_file

    model = Path(model) if is_onnx_file(model) else resolve_model_dir(model)
    with claim_predict_output(model, inputs, out_dir):
        return _predict(model, inputs, out_dir, threshold, progress, ann)


def _predict(model: str | Path, inputs: list[str | Path], out_dir: str | Path, threshold: float,
             progress: bool, ann: str | Path | None) -> PredictResult:
    from detrdistill.progress import progress_bar

    if not 0.0 <= threshold <= 1.0:
        raise PredictError(f"--threshold must be in [0, 1], got {threshold}")
    all_files = collect_images(inputs)
    position = {f: i for i, f in enumerate(all_files, start=1)}
    files, skipped = readable_images(all_files)  # before any work: the model is not loaded for nothing
    if not files:
        first, why = skipped[0]
        raise PredictError(f"none of the {len(all_files)} input file(s) is a readable image (first: {first}: "
                           f"{why}); nothing written")
    predictor = load_predictor(model)
    image_ids, category_ids, index = _result_ids(predictor, files, position, ann)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result, records, used = PredictResult(skipped=skipped), [], set()
    for path in progress_bar(files, desc="predict", disable=not progress):
        try:
            image = open_rgb(path)
        except PredictError as e:  # the header opened, the pixels do not (e.g. a truncated file)
            result.skipped.append((path, _skip_warning(path, e)))
            continue
        det = detect(predictor, image)
        keep = det["scores"] >= threshold
        det = {k: v[keep] for k, v in det.items()}
        png = _unique_png(out_dir, path.stem, used)
        write_png(png, draw_detections(image, det, predictor.id2label))
        result.images.append(png)
        records += _coco_records(det, image_ids[path], path, predictor.id2label, category_ids)
    if not result.images:
        raise PredictError(f"none of the {len(all_files)} input file(s) could be decoded; nothing written")
    result.num_detections = len(records)
    result.predictions_file = write_predictions(out_dir, records)
    if index is not None:
        done = set(files) - {p for p, _ in result.skipped}
        result.stats = index.stats(records, sorted({image_ids[p] for p in done}))
    return result


def _result_ids(predictor: Predictor, files: list[Path], position: dict[Path, int], ann: str | Path | None):
    """({file: image_id}, {label: category_id}, the AnnotationIndex or None): the dataset's ids with ``ann``,
    else input positions and the model's recorded dataset ids (else its label indices)."""
    if ann is not None:
        from detrdistill.predict_scoring import AnnotationIndex

        index = AnnotationIndex(ann, predictor.id2label)
        return index.image_ids(files), index.category_ids, index
    cats = predictor.category_ids or {label: label for label in predictor.id2label}
    return {f: position[f] for f in files}, cats, None


def _coco_records(det: dict[str, torch.Tensor], image_id: int, path: Path, id2label: dict[int, str],
                  category_ids: dict[int, int]) -> list[dict]:
    out = []
    for score, label, (x0, y0, x1, y1) in zip(det["scores"].tolist(), det["labels"].tolist(), det["boxes"].tolist()):
        out.append({"image_id": image_id, "file_name": str(path), "category_id": int(category_ids[int(label)]),
                    "category_name": id2label.get(int(label), str(label)),
                    "bbox": [round(v, 2) for v in (x0, y0, x1 - x0, y1 - y0)], "score": round(float(score), 5)})
    return out
