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
    """Load ``model_dir`` (a transformers directory), evaluate on ``cfg.data.<split>``, write eval.json.

    The eval folder is claimed first (:func:`detrdistill.output_folder.claim_output`): locked for the whole
    evaluation, and ``eval.json`` may not equal, contain or lie inside the model or the split's data; a
    read-only folder fails before evaluating."""
    from detrdistill.engine.run_dir import data_inputs
    from detrdistill.engine.setup import make_accelerator
    from detrdistill.output_folder import NO_LOCK, claim_output

    accelerator = make_accelerator(cfg)
    out = Path(output_dir or cfg.train.output_dir)
    lock = NO_LOCK
    if accelerator.is_main_process:
        lock = claim_output(out, [("model", model_dir), *data_inputs(cfg.data, (split,))], "--eval-dir",
                            written=out / "eval.json")
    with lock:
        return _evaluate_into(cfg, model_dir, split, out, accelerator)


def _evaluate_into(cfg: Config, model_dir: str | Path, split: str, out: Path, accelerator) -> dict:
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.engine.setup import build_datasets
    from detrdistill.models.adapters import get_adapter
    from detrdistill.models.build import load_detector

    if split == "val":
        _, ds = build_datasets(cfg, accelerator, need_train=False)
    else:
        split_cfg = getattr(cfg.data, split, None)
        if split_cfg is None:
            raise ConfigError(f"config: data.{split} is not set")
        ds = build_dataset(split_cfg, cfg.data, train=False)
    if ds is None:
        raise ConfigError(f"config: data.{split} is not set")
    model = load_detector(model_dir)
    names = {int(k): v for k, v in model.config.id2label.items()}
    if names != dict(ds.id2label):
        raise ModelError(f"{model_dir}: the model's label map {names} differs from the dataset's "
                         f"{dict(ds.id2label)}; evaluate on the dataset the model was trained on")
    adapter = get_adapter(model).to(accelerator.device)
    loader = eval_loader(ds, collate_fn, cfg.train.batch_size, accelerator.process_index,
                         accelerator.num_processes, cfg.data.num_workers)
    stats = evaluate(adapter, loader, ds, accelerator, progress=cfg.train.progress, desc=f"eval {split}")
    if accelerator.is_main_process:
        write_eval_json(out / "eval.json", stats, {"split": split, "model": str(model_dir)})
        log.info("eval %s: %s", split, json.dumps({k: round(v, 2) for k, v in stats.items() if "/" not in k}))
        log.info(format_per_class(stats))
    return stats
