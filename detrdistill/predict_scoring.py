"""``detrdistill predict ... --ann FILE``: results in the dataset's ids, scored with the project's COCO evaluator.

Given the COCO json of the images being predicted, each image file gets the ``image_id`` of its entry (matched
by ``file_name``: the longest trailing part of the path equal to an entry's ``file_name``, else a unique base
name), and each model class the ``category_id`` of the dataset category with the same name. The results written
are then scored by :func:`detrdistill.engine.evaluator.coco_stats` over the predicted images only.
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from detrdistill.errors import PredictError

__all__ = ["AnnotationIndex", "AnnotationError"]


class AnnotationError(PredictError, ValueError):
    """An ``--ann`` file that does not describe the predicted images or the model's classes."""


class AnnotationIndex:
    """The images and categories of a COCO json, as ``predict --ann`` maps files and classes onto them."""

    def __init__(self, ann_file: str | Path, id2label: dict[int, str]):
        from detrdistill.data.coco import CocoDetection

        self.ann_file = str(ann_file)
        # the project's loader: validated and cleaned as evaluation reads it; the image files are not opened
        self.dataset = CocoDetection(ann_file, Path(ann_file).parent, check_images=False, progress=False)
        name2cat = {name: self.dataset.label2cat[label] for label, name in self.dataset.id2label.items()}
        missing = [name for name in id2label.values() if name not in name2cat]
        if missing:
            raise AnnotationError(f"{ann_file}: the model's classes {missing[:5]} are not categories of this file "
                                  f"(its categories: {', '.join(sorted(name2cat)[:10])}); give the json of the "
                                  "dataset the model was trained on")
        self.category_ids = {int(label): int(name2cat[name]) for label, name in id2label.items()}
        self._by_name = {PurePosixPath(im["file_name"]).as_posix(): int(im["id"]) for im in self.dataset.images}
        by_base: dict[str, list[int]] = {}
        for im in self.dataset.images:
            by_base.setdefault(PurePosixPath(im["file_name"]).name, []).append(int(im["id"]))
        self._by_base = {k: v[0] for k, v in by_base.items() if len(v) == 1}

    def image_id(self, path: Path) -> int | None:
        """The ``image_id`` of the file at ``path``, or None when the json has no entry for it."""
        parts = Path(path).resolve().parts if Path(path).exists() else Path(path).parts
        for k in range(len(parts)):
            hit = self._by_name.get(PurePosixPath(*parts[k:]).as_posix())
            if hit is not None:
                return hit
        return self._by_base.get(Path(path).name)

    def image_ids(self, files: list[Path]) -> dict[Path, int]:
        """``{file: image_id}`` for every file; :class:`AnnotationError` naming the first files it lacks."""
        ids = {f: self.image_id(f) for f in files}
        missing = [str(f) for f, i in ids.items() if i is None]
        if missing:
            raise AnnotationError(f"{self.ann_file}: no image entry for {', '.join(missing[:3])}"
                                  f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''} (matched by "
                                  "file_name); predict only images of this json, or leave out --ann")
        return ids  # type: ignore[return-value]

    def stats(self, records: list[dict], image_ids: list[int]) -> dict[str, float]:
        """COCO bbox stats (percent) of ``records`` over ``image_ids`` (the images predicted)."""
        from detrdistill.engine.evaluator import coco_stats

        results = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in records]
        return coco_stats(self.dataset.coco_gt, results, image_ids=image_ids)
