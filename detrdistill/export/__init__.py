"""Everything that makes a trained model usable outside the project: image processor, model card, ONNX."""
from __future__ import annotations

from pathlib import Path

from detrdistill.config import Config


def finish_model_dir(model_dir: str | Path, cfg: Config, stats: dict | None, mode: str) -> None:
    """Complete an exported ``model/`` directory: the eval-matching image processor and ``README.md``."""
    from detrdistill.export.model_card import write_model_card
    from detrdistill.export.processor import save_image_processor

    save_image_processor(model_dir, cfg.model.family, cfg.data.eval_size, cfg.data.max_size)
    write_model_card(cfg, model_dir, stats, mode)
