"""transformers' ``Trainer``, distilling the detector it trains from a frozen teacher.

The object-detection fine-tuning recipe of transformers (an image processor, labels as ``{"class_labels", "boxes"}``
in normalised cxcywh, ``TrainingArguments``, a collator stacking ``pixel_values`` / ``pixel_mask``) runs unchanged
with ``Trainer`` replaced by :class:`DistillationTrainer` and a ``teacher`` added::

    trainer = DistillationTrainer(model=student, teacher="PekingU/rtdetr_r50vd", args=training_args,
                                  train_dataset=train_ds, eval_dataset=val_ds, data_collator=collate_fn,
                                  processing_class=image_processor)
    trainer.train()
    trainer.save_model("runs/student")       # a plain student: AutoModelForObjectDetection.from_pretrained loads it

What changes inside:

* **training**: the Trainer's model is a :class:`~detrdistill.distillation.detr_distiller.DETRDistiller` holding
  the student (trained in place: the ``model`` passed in is the student afterwards), the frozen teacher and the
  terms' connectors; the optimizer gets the student and the connectors, never the teacher. The loss is
  the student's loss + every enabled term; each component is logged as ``loss/<name>`` (its mean over the batches
  since the last log, over all processes) next to the Trainer's ``loss``, through the Trainer's own logging (so
  every ``report_to`` tracker gets them).
* **evaluation / prediction**: the student alone, exactly as the plain recipe runs it (its transformers outputs;
  ``eval_loss`` is its own transformers loss), so the recipe's ``compute_metrics`` works as it is.
* **saving**: ``save_model`` and every checkpoint write the plain student (weights, ``config.json``, the
  ``processing_class``, a model card). A checkpoint also holds ``distillation_state.pt`` (student, connectors,
  criterion) for ``resume_from_checkpoint`` and ``load_best_model_at_end``.
* ``TrainingArguments.bf16``: the teacher runs in bf16 too unless ``distill_config`` sets ``teacher_dtype``.
  Gradient accumulation: the distillation loss is a per-batch mean, divided by the accumulation steps as the
  Trainer does for any such loss. Several GPUs: DDP through accelerate (``torchrun`` / ``accelerate launch``), with
  ``find_unused_parameters`` (some connectors get no gradient in some steps). DeepSpeed and FSDP are refused.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from transformers import Trainer
from transformers.trainer import TRAINING_ARGS_NAME

from ..config import DistillConfig, LossConfig
from ..distillation.detr_distiller import DETRDistiller, ModelLike, ProcessorLike, _section
from ..errors import CheckpointError, ConfigError, UnsupportedSettingError

__all__ = ["DistillationTrainer", "STATE_FILE"]

STATE_FILE = "distillation_state.pt"  # in each checkpoint folder: DETRDistiller.checkpoint_state_dict()


def _is_image_processor(obj: Any) -> bool:
    from transformers.image_processing_base import ImageProcessingMixin

    return isinstance(obj, ImageProcessingMixin)


class DistillationTrainer(Trainer):
    """``transformers.Trainer`` that distils ``model`` (the student) from ``teacher`` with DETRDistill.

    Args:
        model: the student, a transformers ``*ForObjectDetection`` model of a registered family (or a
            :class:`~detrdistill.DETRDistiller` built beforehand, then ``teacher`` and the options below are unused).
        args, and every other positional / keyword argument: as for ``transformers.Trainer`` (``model_init`` is not
            supported: the distiller is built once around the given student).
        teacher: the frozen teacher: a model object, a local model folder or a hub id.
        distill_config: :class:`~detrdistill.config.DistillConfig` (or a dict of its keys): terms and weights.
        loss: :class:`~detrdistill.config.LossConfig` (or a dict): the student's own loss (``recipe``).
        teacher_processor: the teacher's image processor when ``teacher`` is a model object (see DETRDistiller).
        category_ids: the COCO category id of each student label, for labels in COCO format.

    The ``processing_class`` (the student's image processor) tells the distiller how the student's pixels were
    made, to feed the teacher its own way, and is saved with the student.
    """

    def __init__(self, model: nn.Module | None = None, args=None, *trainer_args, teacher: ModelLike | None = None,
                 distill_config: DistillConfig | Mapping | None = None, loss: LossConfig | Mapping | None = None,
                 teacher_processor: ProcessorLike = None, category_ids: Sequence[int] | None = None,
                 **trainer_kwargs):
        bound = inspect.signature(Trainer.__init__).bind_partial(None, model, args, *trainer_args, **trainer_kwargs)
        if bound.arguments.get("model_init") is not None:
            raise ConfigError("DistillationTrainer: model_init is not supported; pass the student as model=")
        if model is None:
            raise ConfigError("DistillationTrainer: model= (the student to distil) is required")
        if not isinstance(model, DETRDistiller):
            bf16 = bool(getattr(args, "bf16", False))
            config = _section(DistillConfig, distill_config, "distill_config").for_mixed_precision(
                "bf16" if bf16 else "no")
            processor = bound.arguments.get("processing_class")
            model = DETRDistiller(teacher, model, config, loss=loss, teacher_processor=teacher_processor,
                                  student_processor=processor if _is_image_processor(processor) else None,
                                  category_ids=category_ids)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if self.is_deepspeed_enabled or self.is_fsdp_enabled:
            raise UnsupportedSettingError("DistillationTrainer: DeepSpeed and FSDP are not supported (the teacher is "
                                          "frozen and the student is saved alone); use DDP (torchrun / accelerate)")
        if self._distiller().distiller.cfg.max_term_ratio > 0:
            raise ConfigError("DistillationTrainer: distill_config.max_term_ratio is applied by detrdistill's own "
                              "engine (detrdistill distill); here set it to 0, or set the distiller's term_weights "
                              "from your own measurement")
        # the distillation loss is a per-batch mean: the Trainer divides it by the gradient accumulation steps
        self.model_accepts_loss_kwargs = False
        self._term_sums: dict[str, torch.Tensor] = {}
        self._term_counts: dict[str, int] = {}

    # ------------------------------------------------------------------ the models
    def _distiller(self, model: nn.Module | None = None) -> DETRDistiller:
        return self.accelerator.unwrap_model(model if model is not None else self.model)

    @property
    def student(self) -> nn.Module:
        """The student being trained (the ``model`` given, trained in place)."""
        return self._distiller().student_model

    # ------------------------------------------------------------------ training
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """Training: the distillation loss (the student's + every term), each component kept for logging.
        The student alone (evaluation, see :meth:`prediction_step`): the Trainer's own computation."""
        if not isinstance(self.accelerator.unwrap_model(model), DETRDistiller):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        distiller = self._distiller(model).distiller
        distiller.step = self.state.global_step  # the distillation warm-up, decay and stop follow it
        distiller.total_steps = self.state.max_steps or None
        out = model(**inputs)
        for name, value in out.losses.items():
            value = value.detach().float()
            self._term_sums[name] = self._term_sums[name] + value if name in self._term_sums else value
            self._term_counts[name] = self._term_counts.get(name, 0) + 1
        return (out.loss, out) if return_outputs else out.loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """A training log (it has ``loss``) also gets ``loss/<name>``: each component's mean over the batches since
        the last log, averaged over processes."""
        if "loss" in logs and self._term_counts:
            from ..engine.metrics import mean_over_processes

            # by name: processes may hold different components (no denoising losses without boxes)
            means = mean_over_processes(self.accelerator, {k: self._term_sums[k] / self._term_counts[k]
                                                           for k in sorted(self._term_counts)})
            logs.update({f"loss/{k}": v for k, v in means.items()})
            self._term_sums, self._term_counts = {}, {}
        super().log(logs, start_time)

    # ------------------------------------------------------------------ evaluation
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """The student alone, as the plain recipe evaluates it: its transformers outputs and its own loss (labels in
        COCO format are converted first)."""
        distiller = self._distiller(model)
        student = distiller.student_model
        inputs = dict(inputs)
        image_sizes = inputs.pop("image_sizes", None)
        if inputs.get("labels") is not None:  # in the frame the plain student predicts in (model_labels)
            inputs["labels"] = distiller.model_labels(inputs["labels"], inputs["pixel_values"],
                                                      inputs.get("pixel_mask"), image_sizes)
        if ignore_keys is None:
            ignore_keys = getattr(student.config, "keys_to_ignore_at_inference", ["cache"])
        from ..models.adapters.lw_detr_base import one_group_in_eval

        with self.accelerator.autocast(), one_group_in_eval(student):  # LW-DETR / RF-DETR's eval loss: one group
            return super().prediction_step(student, inputs, prediction_loss_only, ignore_keys)

    # ------------------------------------------------------------------ saving / loading
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The plain student, its image processor and a model card (main process only)."""
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        processor = self.processing_class if hasattr(self.processing_class, "save_pretrained") else None
        self._distiller().save_student(output_dir, image_processor=processor)
        torch.save(self.args, os.path.join(output_dir, TRAINING_ARGS_NAME))

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

            folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
            torch.save(self._distiller().checkpoint_state_dict(), os.path.join(folder, STATE_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.isfile(path):
            raise CheckpointError(f"{resume_from_checkpoint}: no {STATE_FILE}; resume a DistillationTrainer from a "
                                  "checkpoint folder it wrote (checkpoint-N)")
        state = torch.load(path, map_location="cpu", weights_only=True)
        self._distiller(model).load_checkpoint_state_dict(state)

    def _load_best_model(self) -> None:
        self._load_from_checkpoint(self.state.best_model_checkpoint)
