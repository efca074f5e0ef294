"""Everything that makes a trained model usable outside the project: image processor, model card, ONNX."""
from __future__ import annotations

from pathlib import Path

from detrdistill.config import Config


def finish_model_dir(model_dir: str | Path, cfg: Config, stats: dict | None, mode: str,
                     category_ids: list[int] | None = None) -> None:
    """Complete an exported ``model/`` directory: the eval-matching image processor, the dataset's category id of
    each class (when given, see :mod:`detrdistill.export.category_ids`) and ``README.md``."""
    from detrdistill.export.category_ids import write_category_ids
    from detrdistill.export.model_card import write_model_card
    from detrdistill.export.processor import save_image_processor

    save_image_processor(model_dir, cfg.model.family, cfg.data.eval_size, cfg.data.max_size)
    if category_ids is not None:
        write_category_ids(model_dir, category_ids)
    write_model_card(cfg, model_dir, stats, mode)
