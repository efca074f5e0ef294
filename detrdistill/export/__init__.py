"""Everything that makes a trained model usable outside the project: image processor, model card, ONNX."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from detrdistill.config import Config


def finish_model_dir(model_dir: str | Path, cfg: Config, model_config: Any, category_ids: list[int] | None = None
                     ) -> None:
    """Complete a saved model directory as training exports it (``model/``, snapshots): the image processor that
    matches the eval transforms (padded to the sides the model takes: ``FamilySpec.sides(model_config)``) and,
    when given, the dataset's category id of each class (:mod:`detrdistill.export.category_ids`). The model card
    (:func:`~detrdistill.export.model_card.write_model_card`) comes after the final evaluation."""
    from detrdistill.export.category_ids import write_category_ids
    from detrdistill.export.processor import save_image_processor
    from detrdistill.models.families import family_spec

    multiple = family_spec(cfg.model.family).sides(model_config).multiple
    save_image_processor(model_dir, cfg.model.family, cfg.data.eval_size, cfg.data.max_size, multiple)
    if category_ids is not None:  # predict / ONNX write the dataset's category ids
        write_category_ids(model_dir, category_ids)
