"""``detrdistill eval``: score a saved model directory on a split with COCO mAP."""
from __future__ import annotations

import json
import logging
from pathlib import Path

from detrdistill.config import Config
from detrdistill.errors import ConfigError, ModelError
from detrdistill.engine.evaluator import evaluate, write_eval_json
from detrdistill.engine.loading import eval_loader
from detrdistill.engine.per_class import format_per_class

log = logging.getLogger("detrdistill")


def run_evaluation(cfg: Config, model_dir: str | Path, split: str = "val", output_dir: str | Path | None = None) -> dict:
    """Load ``model_dir`` (a transformers directory, or an exported ``.onnx`` file run by onnxruntime), evaluate on
    ``cfg.data.<split>``, write eval.json. An ONNX model is evaluated at the resize its metadata records.

    A local model directory that does not exist is refused before anything is written. The eval folder is then
    claimed (:func:`detrdistill.output_folder.claim_output`): locked for the whole
    evaluation, and ``eval.json`` may not equal, contain or lie inside the model or the split's data; a
    read-only folder fails before evaluating."""
    from detrdistill.engine.run_dir import data_inputs
    from detrdistill.engine.setup import make_accelerator
    from detrdistill.export.onnx_runtime import is_onnx_file
    from detrdistill.models.pretrained import check_local_model
    from detrdistill.output_folder import NO_LOCK, claim_output

    onnx = None
    if not is_onnx_file(model_dir):
        check_local_model(model_dir)  # before the eval folder exists: a missing model leaves nothing behind
    else:
        from detrdistill.export.onnx_runtime import OnnxDetector
        onnx = OnnxDetector(model_dir)
        cfg = with_onnx_preprocessing(cfg, onnx.info, model_dir)
    accelerator = make_accelerator(cfg)
    out = Path(output_dir or cfg.train.output_dir)
    lock = NO_LOCK
    if accelerator.is_main_process:
        lock = claim_output(out, [("model", model_dir), *data_inputs(cfg.data, (split,))], "--eval-dir",
                            written=out / "eval.json")
    with lock:
        return _evaluate_into(cfg, model_dir, onnx, split, out, accelerator)


def _evaluate_into(cfg: Config, model_dir: str | Path, onnx, split: str, out: Path, accelerator) -> dict:
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.engine.setup import build_datasets

    if split == "val":
        _, ds = build_datasets(cfg, accelerator, need_train=False)
    else:
        split_cfg = getattr(cfg.data, split, None)
        if split_cfg is None:
            raise ConfigError(f"config: data.{split} is not set")
        ds = build_dataset(split_cfg, cfg.data, train=False)
    if ds is None:
        raise ConfigError(f"config: data.{split} is not set")
    names, adapter = _load_for_eval(model_dir, onnx)
    if names != dict(ds.id2label):
        raise ModelError(f"{model_dir}: the model's label map {names} differs from the dataset's "
                         f"{dict(ds.id2label)}; evaluate on the dataset the model was trained on")
    adapter = adapter.to(accelerator.device)
    loader = eval_loader(ds, collate_fn, cfg.train.batch_size, accelerator.process_index,
                         accelerator.num_processes, cfg.data.num_workers)
    stats = evaluate(adapter, loader, ds, accelerator, progress=cfg.train.progress, desc=f"eval {split}")
    if accelerator.is_main_process:
        write_eval_json(out / "eval.json", stats, {"split": split, "model": str(model_dir)})
        log.info("eval %s: %s", split, json.dumps({k: round(v, 2) for k, v in stats.items() if "/" not in k}))
        log.info(format_per_class(stats))
    return stats


def _load_for_eval(model_dir: str | Path, onnx) -> tuple[dict[int, str], object]:
    """(class names, the adapter evaluation runs): the PyTorch model's adapter, or the ONNX session's."""
    if onnx is not None:
        from detrdistill.export.onnx_runtime import OnnxAdapter
        return dict(onnx.info.id2label), OnnxAdapter(onnx)
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import load_detector

    model = load_detector(model_dir)
    return {int(k): v for k, v in model.config.id2label.items()}, get_adapter(model)


def with_onnx_preprocessing(cfg: Config, info, where: str | Path) -> Config:
    """``cfg`` with ``data.eval_size`` / ``data.max_size`` from an ONNX file's metadata (the resize it was exported
    with); its normalisation must be the eval transforms' (ImageNet mean / std, 1/255)."""
    from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    pre = info.preprocessing or {}
    resize = pre.get("resize") or {}
    if "shortest_edge" not in resize or "longest_edge" not in resize:
        raise ModelError(f"{where}: its metadata has no shortest/longest-edge resize ({resize or 'none'}); eval "
                         "needs a model exported by detrdistill from a run's model/ folder")
    mean, std, scale = pre.get("image_mean"), pre.get("image_std"), pre.get("rescale_factor")
    if not (_close(mean, IMAGENET_MEAN) and _close(std, IMAGENET_STD) and _close([scale], [1 / 255])):
        raise ModelError(f"{where}: its normalisation (mean {mean}, std {std}, rescale {scale}) is not the eval "
                         "transforms' (ImageNet mean / std, 1/255)")
    short, long = int(resize["shortest_edge"]), int(resize["longest_edge"])
    if (short, long) != (cfg.data.eval_size, cfg.data.max_size):
        log.info("%s: evaluating at its exported resize (short side %d, long side at most %d)", where, short, long)
    cfg = cfg.model_copy(deep=True)
    cfg.data.eval_size, cfg.data.max_size = short, long
    return cfg


def _close(values, expected, tol: float = 1e-6) -> bool:
    return (values is not None and None not in values and len(values) == len(expected)
            and all(abs(float(a) - float(b)) <= tol for a, b in zip(values, expected)))
