"""The public distiller: a frozen teacher, a trainable student and the DETRDistill losses, for any training loop.

    from detrdistill import DETRDistiller, DistillConfig
    distiller = DETRDistiller("PekingU/rtdetr_r50vd", my_student, DistillConfig(), student_processor=processor)
    out = distiller(pixel_values, pixel_mask=pixel_mask, labels=labels)   # DETRDistillerOutput
    out.loss.backward()                                                   # student + connectors, never the teacher
    distiller.save_student("runs/student", image_processor=processor)     # a plain transformers model folder

Everything ``detrdistill distill`` does happens here, from the same code: the teacher is loaded once (a model
folder or hub id, or a model object), fed pixels its own way (its processor's normalisation and resizing,
:mod:`.teacher_pixels`), its classes mapped to the student's by name (:mod:`.class_map`); the student is trained by
its family's own transformers loss or the set criterion (``loss.recipe``) plus every enabled term of ``config``.
The engine's distillation task (:mod:`.task`) is this object behind the engine's task interface.

Labels are transformers' target dicts or COCO annotations (:mod:`detrdistill.data.labels`).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence, Union

from pydantic import BaseModel, ValidationError
from torch import Tensor, nn

from ..config import DistillConfig, LossConfig
from ..config_origins import Origins, format_validation_error
from ..errors import ConfigError, ModelError
from ..models.adapters.base import DetectorAdapter
from ..models.families import get_adapter
from ..models.outputs import DetectorOutput
from ..state_loading import load_state_strictly
from .distiller import Distiller
from .teacher_pixels import PixelNorm, ResizeRule, build_teacher_pixels, warn_no_teacher_processor

log = logging.getLogger("detrdistill")

__all__ = ["DETRDistiller", "DETRDistillerOutput", "ModelLike", "ProcessorLike"]

#: a detector: a transformers ``*ForObjectDetection`` model of a registered family, its detrdistill adapter, or a
#: local model folder / Hugging Face hub id to load it from
ModelLike = Union[str, os.PathLike, nn.Module]
#: an image processor: a transformers image processor object, the dict of its settings (``to_dict()``, a
#: ``preprocessor_config.json``), or None
ProcessorLike = Union[Any, Mapping[str, Any], None]


@dataclass
class DETRDistillerOutput:
    """One distillation step.

    loss:            scalar, with grad: the student's detection loss + every enabled, weighted distillation term.
    losses:          each component of ``loss``, detached, by name: the student's own (``cls`` / ``bbox`` / ``giou``
                     under the set criterion; the family's own, e.g. ``vfl`` / ``dn_vfl`` / ``fgl`` ..., under
                     ``loss.recipe=family``) and the enabled terms' (``logits_cls``, ``logits_bbox``, ``logits_giou``,
                     ``feature``, ``query_prior_cls`` / ``_bbox`` / ``_giou``, ...). They sum to ``loss``.
    student_outputs: the student's per-stage outputs (:class:`~detrdistill.models.outputs.DetectorOutput`:
                     ``logits`` [L, B, N, C(+1)], ``boxes`` [L, B, N, 4] normalised cxcywh, features, queries).
    teacher_outputs: the teacher's, its logits already mapped to the student's classes (None after ``stop_at``).
    parts:           ``loss`` split by source, with grad: ``student`` (its own loss) and one entry per active term
                     (``logits``, ``feature``, ``query_prior``, ...), for
                     :func:`detrdistill.engine.grad_balance.gradient_balance` (does a term dominate the update?).

    ``logits`` / ``pred_boxes`` are the student's last stage ([B, N, C(+1)] / [B, N, 4]), as a transformers detector
    returns them, so ``image_processor.post_process_object_detection(out, target_sizes=...)`` reads this output.
    """
    loss: Tensor
    losses: dict[str, Tensor]
    student_outputs: DetectorOutput
    teacher_outputs: DetectorOutput | None
    parts: dict[str, Tensor] = field(default_factory=dict)

    @property
    def logits(self) -> Tensor:
        return self.student_outputs.logits[-1]

    @property
    def pred_boxes(self) -> Tensor:
        return self.student_outputs.boxes[-1]


def _section(cls: type[BaseModel], value: Any, where: str) -> BaseModel:
    """A config section from an instance, a dict of its keys or None (defaults); bad keys are one line."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, Mapping):
        try:
            return cls.model_validate(dict(value))
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, cls, Origins(file=where))) from None
    raise ConfigError(f"{where}: expected a {cls.__name__} or a dict of its keys, got {type(value).__name__}")


def processor_settings(processor: ProcessorLike, where: str) -> dict | None:
    """The settings dict of an image processor (object, dict or None)."""
    if processor is None:
        return None
    if isinstance(processor, Mapping):
        return dict(processor)
    to_dict = getattr(processor, "to_dict", None)
    if callable(to_dict):
        return to_dict()
    raise ConfigError(f"{where}: expected a transformers image processor or a dict of its settings, got "
                      f"{type(processor).__name__}")


def _resize_rule(settings: dict | None) -> ResizeRule | None:
    """The student's resize rule (compared with the teacher's under ``teacher_input=auto``); None when it has none
    or one the teacher's view cannot compare with (the teacher is then resized by its own rule)."""
    if not settings:
        return None
    try:
        return ResizeRule.from_processor_config(settings, "student_processor")
    except ModelError:
        return None


@dataclass
class _Resolved:
    """A detector as the distiller holds it: its adapter, a name for logs and cards, its saved processor settings."""
    adapter: DetectorAdapter
    name: str
    processor: dict | None


def _resolve(model: ModelLike, what: str) -> _Resolved:
    """A model object is adapted as it is (nothing is frozen or re-headed); a folder / hub id is resolved once,
    loaded, and its ``preprocessor_config.json`` read from the same place."""
    if isinstance(model, DetectorAdapter):
        return _Resolved(model, str(getattr(model.model, "name_or_path", "") or model.family), None)
    if isinstance(model, nn.Module):
        return _Resolved(get_adapter(model), str(getattr(model, "name_or_path", "") or type(model).__name__), None)
    if not isinstance(model, (str, os.PathLike)):
        raise ConfigError(f"{what}: expected a transformers detector, a model folder or a hub id, got "
                          f"{type(model).__name__}")
    from ..models.build import load_detector
    from ..models.pretrained import resolve_model

    source = resolve_model(model, what=what)
    return _Resolved(get_adapter(load_detector(source, what=what)), source.name,
                     source.read_json("preprocessor_config.json"))


class DETRDistiller(nn.Module):
    """Distil ``teacher`` into ``student`` with DETRDistill, one batch at a time.

    Args:
        teacher: the frozen teacher: a transformers ``*ForObjectDetection`` model of a registered family, a local
            model folder or a hub id (None: ``config.teacher``). Its classes must include the student's, by name.
        student: the detector to train, a model object (trained in place; its backbone freeze state is left as it
            is) or a folder / hub id; its ``config.id2label`` are the classes the labels index.
        config: the distillation terms and their weights (:class:`~detrdistill.config.DistillConfig` or a dict of
            its keys; defaults: the official DETRDistill setting).
        loss: the student's own loss (:class:`~detrdistill.config.LossConfig` or a dict): ``recipe="family"``
            (default) trains a family that has its own transformers training loss (RT-DETR: denoising groups +
            varifocal, ...) with it, every other family with the set criterion; ``"set"`` the set criterion always.
        student_processor: the image processor that made the student's ``pixel_values`` (object or settings dict;
            None: the student folder's saved one, else ImageNet mean / std without a resize rule). The teacher's
            view is derived from the student's pixels with it, and :meth:`save_student` saves it.
        teacher_processor: the teacher's image processor (object or dict). None: the teacher folder's saved
            ``preprocessor_config.json``; a teacher given as a model object then sees the student's pixels.
            How it is honoured: ``config.teacher_input`` (see :mod:`detrdistill.distillation.teacher_pixels`).
        category_ids: the COCO category id of each student label (label i is ``category_ids[i]``), for labels in
            COCO format; None: the student config's ``dataset_category_ids`` if recorded, else the category ids are
            the label indices. :meth:`save_student` records them (``detrdistill predict`` writes them).
        dataset_id2label: when given, must equal the student's label map (checked before training).

    Submodules: ``distiller`` (:class:`~detrdistill.distillation.distiller.Distiller`: teacher, student, the terms'
    losses and connectors) and ``criterion`` (the student's loss). Move the whole object with ``.to(device)``.
    """

    def __init__(self, teacher: ModelLike | None, student: ModelLike, config: DistillConfig | Mapping | None = None,
                 *, loss: LossConfig | Mapping | None = None, student_processor: ProcessorLike = None,
                 teacher_processor: ProcessorLike = None, category_ids: Sequence[int] | None = None,
                 dataset_id2label: Mapping[int, str] | None = None):
        super().__init__()
        from ..models.family_loss import student_criterion

        cfg = _section(DistillConfig, config, "config")
        self.loss_config: LossConfig = _section(LossConfig, loss, "loss")
        teacher = teacher if teacher is not None else cfg.teacher
        if teacher is None:
            raise ConfigError("DETRDistiller: no teacher; pass teacher= (a model, folder or hub id) or set "
                              "config.teacher")
        t = _resolve(teacher, "teacher")
        s = _resolve(student, "student")
        self.teacher_name = t.name
        self._student_processor = student_processor if hasattr(student_processor, "save_pretrained") else None
        student_view = processor_settings(student_processor, "student_processor") or s.processor
        teacher_view = processor_settings(teacher_processor, "teacher_processor") or t.processor
        if teacher_view is None and isinstance(teacher, (str, os.PathLike)):
            warn_no_teacher_processor("teacher", t.name)
        pixels = build_teacher_pixels(
            teacher_view, PixelNorm.from_processor_config(student_view or {}, "student_processor"),
            teacher_name=t.name, student_resize=_resize_rule(student_view), mode=cfg.teacher_input)
        self.distill_config: DistillConfig = cfg
        self.distiller = Distiller(t.adapter, s.adapter, cfg, dataset_id2label=dataset_id2label, teacher_pixels=pixels)
        self.criterion = student_criterion(self.loss_config, s.adapter)
        self.category_ids: list[int] | None = self._category_ids(category_ids, s.adapter)

    @staticmethod
    def _category_ids(given: Sequence[int] | None, student: DetectorAdapter) -> list[int] | None:
        from ..export.category_ids import CategoryIdsError, category_ids_of

        if given is None:
            recorded = category_ids_of(student.config)
            return [recorded[i] for i in range(len(recorded))] if recorded else None
        ids = [int(c) for c in given]
        if len(ids) != student.num_classes or len(set(ids)) != len(ids):
            raise CategoryIdsError(f"category_ids: {len(ids)} ids for a student of {student.num_classes} classes; give "
                                   "one distinct COCO category id per student label, in label order")
        return ids

    # ------------------------------------------------------------------ the models
    @property
    def student_model(self) -> nn.Module:
        """The student as transformers runs it (a ``*ForObjectDetection`` model): what is trained and saved."""
        return self.distiller.student.model

    @property
    def teacher_model(self) -> nn.Module:
        """The frozen teacher (a ``*ForObjectDetection`` model)."""
        return self.distiller.teacher.model

    @property
    def terms(self) -> list[str]:
        """The enabled distillation terms, in step order (their loss names start with these)."""
        return [t.name for t in self.distiller.terms]

    def extra_repr(self) -> str:
        return (f"teacher={self.teacher_name!r}, student={self.distiller.student.family}, terms={self.terms}, "
                f"recipe={self.loss_config.recipe!r}")

    # ------------------------------------------------------------------ one step
    def targets(self, labels: Sequence, image_sizes: Any = None, batch_size: int | None = None,
                device=None, pixel_mask: Tensor | None = None) -> list[dict]:
        """``labels`` (transformers or COCO format, see :mod:`detrdistill.data.labels`) as transformers targets
        on ``device``, checked against the student's classes, boxes as fractions of each image's real pixels (with
        ``pixel_mask``, a padding processor's labels are taken there: their ``size`` is the mask's H x W)."""
        from ..data.labels import to_targets
        from ..models.adapters.base import padded_targets_to_real_frame

        targets = to_targets(labels, image_sizes, self.category_ids, num_classes=self.distiller.student.num_classes,
                             batch_size=batch_size, device=device)
        return padded_targets_to_real_frame(targets, pixel_mask)

    def model_labels(self, labels: Sequence, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                     image_sizes: Any = None) -> list[dict]:
        """``labels`` as the plain student model takes them (``self.student_model(..., labels=)``): the targets of
        :meth:`targets`, in the frame the model predicts in (a model that never reads the pixel mask, e.g. RT-DETR
        or D-FINE, predicts fractions of the padded input: its targets are scaled to that)."""
        from ..models.adapters.base import padded_frame_scale, targets_in_padded_frame
        from ..models.families import family_spec

        targets = self.targets(labels, image_sizes, pixel_values.shape[0], pixel_values.device, pixel_mask)
        if pixel_mask is None or "pixel_mask" in family_spec(self.distiller.student.family).capabilities:
            return targets
        return targets_in_padded_frame(targets, padded_frame_scale(pixel_mask))

    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None, labels: Sequence | None = None,
                image_sizes: Any = None) -> DETRDistillerOutput:
        """pixel_values [B, 3, H, W] as the student's processor made them; pixel_mask [B, H, W] (1 = real pixel,
        None = all real); labels: B entries, transformers targets or COCO annotation lists; image_sizes: [B, 2]
        (height, width) of each image in the pixels of its COCO ``bbox`` values (COCO labels only)."""
        targets = self.targets(labels, image_sizes, pixel_values.shape[0], pixel_values.device, pixel_mask)
        out = self.distiller(pixel_values, pixel_mask, targets, self.criterion)
        return DETRDistillerOutput(loss=out.loss, losses=out.loss_dict, student_outputs=out.student,
                                   teacher_outputs=out.teacher, parts=out.parts)

    def student_forward(self, pixel_values: Tensor, pixel_mask: Tensor | None = None,
                        labels: Sequence | None = None, image_sizes: Any = None):
        """The student alone, as transformers runs it: its ``*ForObjectDetection`` output (``logits``,
        ``pred_boxes``, the latter as the model predicts them: for a model that never reads the pixel mask, e.g.
        RT-DETR or D-FINE, fractions of the padded input; with labels also its own transformers ``loss`` /
        ``loss_dict``, the labels given in the model's frame, :meth:`model_labels`). Evaluation uses this."""
        from ..models.adapters.lw_detr_base import one_group_in_eval

        kwargs = {} if pixel_mask is None else {"pixel_mask": pixel_mask}
        if labels is not None:
            kwargs["labels"] = self.model_labels(labels, pixel_values, pixel_mask, image_sizes)
        with one_group_in_eval(self.student_model):  # LW-DETR / RF-DETR: transformers' eval loss otherwise splits
            return self.student_model(pixel_values=pixel_values, **kwargs)

    # ------------------------------------------------------------------ training state
    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything trained: the student, the terms' connectors and the criterion's
        parameters, if any; never the teacher."""
        for name, p in self.distiller.named_trainable_parameters():
            yield f"distiller.{name}", p
        for name, p in self.criterion.named_parameters():
            if p.requires_grad:
                yield f"criterion.{name}", p

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer must update: ``torch.optim.AdamW(distiller.trainable_parameters(), lr=...)``."""
        return [p for _, p in self.named_trainable_parameters()]

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """Everything but the teacher (student, connectors, criterion), to resume a distillation."""
        state = {f"distiller.{k}": v for k, v in self.distiller.checkpoint_state_dict().items()}
        state.update({f"criterion.{k}": v for k, v in self.criterion.state_dict().items()})
        return state

    def load_checkpoint_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state_dict`; strict (:class:`~detrdistill.errors.CheckpointError` naming
        the keys that do not fit)."""
        load_state_strictly(self, state, skip_missing=("distiller.teacher.",), what="the distiller")

    # ------------------------------------------------------------------ the result
    def save_student(self, path: str | os.PathLike, image_processor: Any = None) -> Path:
        """Write the plain student into folder ``path`` (created if needed): ``config.json`` + weights (what
        ``AutoModelForObjectDetection.from_pretrained(path)`` and ``detrdistill predict`` load), the image processor
        (``image_processor``, else the ``student_processor`` object given at construction), the COCO category ids
        (``category_ids``) and a model card ``README.md``. No teacher, connector or loss is saved."""
        from ..export.category_ids import write_category_ids
        from ..export.model_card import write_distilled_card

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.distiller.export_student(path)
        processor = image_processor if image_processor is not None else self._student_processor
        if processor is not None:
            processor.save_pretrained(str(path))
        else:
            log.warning("save_student(%s): no image processor given; pass image_processor= so that pipeline() and "
                        "detrdistill predict prepare pixels as in training", path)
        if self.category_ids is not None:
            write_category_ids(path, self.category_ids)
        write_distilled_card(path, self.distiller.student.family, self.teacher_name, self.terms,
                             self.loss_config.recipe)
        return path
