"""The :class:`Distiller`: a frozen teacher, a trainable student and the DETRDistill losses, declared from
:class:`~detrdistill.config.DistillConfig`.

One training step::

    out = distiller(pixel_values, pixel_mask, targets, criterion)   # -> DistillOutput
    out.loss.backward()                                             # student + adapters/projection/heads only

Total loss = student detection loss (``criterion`` on the student's own queries, every stage)
           + logits distillation (``logits_cls`` / ``logits_bbox`` / ``logits_giou`` [+ ``logits_neg``])
           + feature distillation (``feature``, every teacher stage's mask)
           + query-prior distillation (``query_prior_cls`` / ``_bbox`` / ``_giou``)
           + optional ``contrastive``, ``fitnet``, ``logit_kd``.
Every weight is in the config (defaults = the official values) and every term can be disabled; ``warmup_steps``
ramps all distillation terms in from 0 over the first steps, ``decay`` / ``stop_at`` take them out again towards
the end (:mod:`.term_schedule`; after ``stop_at`` the teacher is not run). The terms are
composed from the config (:mod:`.terms`); each reads the step's :class:`~.context.StepContext` and returns named
losses.

The teacher is frozen: ``requires_grad=False``, always in eval mode (``Distiller.train()`` cannot switch it), run
under ``torch.no_grad`` (optionally in bf16 autocast, ``teacher_dtype``).  Its own Hungarian matching against the
GT (``distill.teacher_matcher``: by default focal 2 / L1 5 / GIoU 2, or DETR's 1 / 5 / 2 for softmax teachers) gives
the per-stage assignments used by the query prior and by ``variant="pos_neg"``, computed once per step when a term
asks for them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from .. import profiling
from ..config import DistillConfig, TeacherMatcherConfig
from ..errors import IncompatibleModelsError
from ..models.adapters.base import DetectorAdapter
from ..models.family_loss import FamilyLoss
from ..models.outputs import DetectorOutput
from ..ops.matcher import HungarianMatcher
from ..state_loading import load_state_strictly
from .class_map import ClassMap, build_class_map
from .context import MATCHING, TEACHER_ASSIGNMENTS, StepContext
from .feature import level_pairs_by_resolution
from .stage_mapping import map_stages
from .step_matching import solve_step_matchings, step_needs
from .teacher_pixels import TeacherInput, log_first_step_cost
from .term_schedule import term_scale
from .terms import TermEnv, build_terms

__all__ = ["Distiller", "DistillOutput", "check_compatible"]


# ----------------------------------------------------------------------------------------------- compatibility
def _label_map(id2label) -> dict[int, str]:
    return {int(k): str(v) for k, v in dict(id2label or {}).items()}


def check_compatible(teacher: DetectorAdapter, student: DetectorAdapter,
                     dataset_id2label: dict | None = None) -> ClassMap | None:
    """The teacher -> student :class:`~.class_map.ClassMap` (None when the label maps are equal), or a clear
    IncompatibleModelsError before training: the student must be built for the dataset's label map, and the teacher
    must know every student class by name (:func:`~.class_map.build_class_map`)."""
    s_map = _label_map(student.config.id2label)
    if dataset_id2label is not None:
        d_map = _label_map(dataset_id2label)
        if d_map != s_map:
            bad = sorted(k for k in set(d_map) | set(s_map) if d_map.get(k) != s_map.get(k))
            shown = ", ".join(f"{k}: dataset {d_map.get(k)!r} / student {s_map.get(k)!r}" for k in bad[:5])
            raise IncompatibleModelsError(f"the student's label map differs from the dataset's ({shown}); build the "
                                          "student for the dataset's classes")
    return build_class_map(teacher.config.id2label, s_map, teacher.class_activation)


def _own_loss(s_out: DetectorOutput) -> Tensor:
    """The student's own loss of a step (a zero scalar when it has none: no criterion was given)."""
    return s_out.loss if s_out.loss is not None else s_out.logits.new_zeros(())


def _now(x: Tensor) -> float:
    """Wall-clock seconds, after the device has finished the work queued so far (timing of the first step)."""
    if x.is_cuda:
        torch.cuda.synchronize(x.device)
    return time.perf_counter()


# ----------------------------------------------------------------------------------------------- output
@dataclass
class DistillOutput:
    """loss:      student detection loss + every weighted distillation term (with grad).
    loss_dict: each component, detached: the criterion's ``cls`` / ``bbox`` / ``giou`` and the active ones of
               ``logits_cls, logits_bbox, logits_giou, logits_neg, feature, query_prior_cls, query_prior_bbox,
               query_prior_giou, contrastive, fitnet, logit_kd``.
    student / teacher: the two DetectorOutputs (teacher None on a step after ``cfg.stop_at``);
    matching:  [L_S, B, N_S] student -> teacher query (or None); stage_map: teacher stage of each student stage.
    parts:     ``loss`` split by source, WITH grad: ``student`` (its own detection loss) and one entry per active term
               (``logits``, ``feature``, ``query_prior``, ...: the sum of that term's components); they sum to
               ``loss``. For :func:`~detrdistill.engine.grad_balance.gradient_balance`.
    """
    loss: Tensor
    loss_dict: dict[str, Tensor]
    student: DetectorOutput
    teacher: DetectorOutput | None
    matching: Tensor | None = None
    stage_map: list[int] = field(default_factory=list)
    parts: dict[str, Tensor] = field(default_factory=dict)


def _as_target(t):
    """A teacher tensor made usable as a training target: float32, and never an inference tensor (those cannot be
    saved for backward, e.g. as the input of the query projection); copies only what needs it."""
    if not isinstance(t, Tensor):
        return t
    if t.is_floating_point() and t.dtype != torch.float32:
        return t.float()  # outside inference mode: a normal tensor
    return t.clone() if t.is_inference() else t


def _to_float(out: DetectorOutput) -> DetectorOutput:
    """Teacher outputs produced under bf16 autocast and/or inference mode -> normal float32 tensors (in place)."""
    f = _as_target
    out.logits, out.boxes, out.embeddings = f(out.logits), f(out.boxes), f(out.embeddings)
    out.encoder_inputs = [f(t) for t in out.encoder_inputs]
    out.encoder_outputs = [f(t) for t in out.encoder_outputs]
    if out.queries is not None:
        q = out.queries
        q.content, q.position, q.reference = f(q.content), f(q.position), f(q.reference)
    return out


def build_teacher_matcher(cfg: TeacherMatcherConfig, class_activation: str) -> HungarianMatcher:
    """The teacher's own GT matcher; an unset class cost follows the activation (softmax 1, focal 2)."""
    softmax = class_activation == "softmax"
    class_cost = cfg.class_cost if cfg.class_cost is not None else (1.0 if softmax else 2.0)
    return HungarianMatcher(class_cost=class_cost, bbox_cost=cfg.bbox_cost, giou_cost=cfg.giou_cost,
                            class_loss="ce" if softmax else "focal")


# ----------------------------------------------------------------------------------------------- distiller
class Distiller(nn.Module):
    """Teacher (frozen) + student + the enabled DETRDistill terms.

    Args:
        teacher, student: detector adapters (``detrdistill.models.families.get_adapter``).
        cfg: the ``distill`` config section (defaults: the official DETRDistill setting).
        dataset_id2label: when given, must equal the student's label map (:func:`check_compatible`). The teacher's
            classes must include the student's by name; its logits are mapped to them (:mod:`.class_map`).
        teacher_matcher: callable ``(logits, boxes, targets) -> [L_T, B, N_T]`` giving the teacher's own GT
            assignment (default: :func:`build_teacher_matcher` from ``cfg.teacher_matcher``).
        probe_size: image side of the one-off probe forward used to pair feature levels by resolution when the
            two models have different level counts.
        teacher_pixels: maps the student's pixel batch to the teacher's own view -- normalisation and resizing of
            its image processor -- (:mod:`.teacher_pixels`); None = the student's pixels.

    The enabled terms' modules (losses, connectors) are registered under their attribute names
    (``feature_loss``, ``query_projection``, ...); ``self.terms`` lists the terms in step order.
    """

    def __init__(self, teacher: DetectorAdapter, student: DetectorAdapter, cfg: DistillConfig | None = None,
                 dataset_id2label: dict | None = None, teacher_matcher: Callable | None = None,
                 probe_size: int = 256, teacher_pixels: nn.Module | None = None):
        super().__init__()
        cfg = cfg if cfg is not None else DistillConfig()
        # teacher classes -> student classes by name, applied once where the teacher's output is produced
        self.class_map = check_compatible(teacher, student, dataset_id2label)
        self.teacher_pixels = teacher_pixels  # the teacher's own view (.teacher_pixels), or None
        self.cfg = cfg
        self.teacher = teacher
        self.student = student
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.teacher_dtype = {"float32": None, "bfloat16": torch.bfloat16}[cfg.teacher_dtype]
        self.stage_map = map_stages(student.num_stages, teacher.num_stages, cfg.stage_mapping)
        self.teacher_matcher = teacher_matcher or build_teacher_matcher(cfg.teacher_matcher,
                                                                        teacher.class_activation)
        level_pairs = None
        if (cfg.feature.enabled or cfg.fitnet.enabled) and student.num_feature_levels != teacher.num_feature_levels:
            level_pairs = self._probe_level_pairs(cfg.feature.source, probe_size)
        self.terms = build_terms(TermEnv(cfg, teacher, student, level_pairs))
        # the training step about to run (:attr:`step`); until someone sets it, counted by the training forwards
        self._step, self._step_given = 0, False
        #: the run's length in steps, for ``cfg.decay`` / ``cfg.stop_at`` (:mod:`.term_schedule`); set by the engine
        #: (``DistillTask.set_step``), ``DistillationTrainer`` or a user's loop
        self.total_steps: int | None = None
        #: a multiplier per term name (absent: 1), on top of :meth:`term_scale`: what ``distill.max_term_ratio``
        #: sets (:mod:`detrdistill.engine.term_cap`); a user's loop may set it too
        self.term_weights: dict[str, float] = {}
        self.batch_matchings = True  # False: each matching solved where it is used (same results, for comparison)
        #: (teacher, student) forward seconds of the first distilled batch, None before it: that forward logs them
        #: with both input sizes (teacher_pixels.py), ``DistillTask.time_left`` prices a step without the teacher
        self.first_step_cost: tuple[float, float] | None = None
        self.matching_needs = step_needs(self.terms)
        for term in self.terms:
            for attr, module in term.modules.items():
                setattr(self, attr, module)

    # ------------------------------------------------------------------ modes / parameters
    def train(self, mode: bool = True) -> "Distiller":
        super().train(mode)
        self.teacher.eval()  # the teacher never leaves eval mode (no dropout, fixed statistics)
        return self

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) of everything trained: student, adapters, projection, heads -- never the teacher."""
        for name, p in self.named_parameters():
            if name.startswith("teacher."):
                if p.requires_grad:
                    raise RuntimeError(f"teacher parameter {name} is trainable; the teacher must stay frozen")
            elif p.requires_grad:
                yield name, p

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_trainable_parameters()]

    def checkpoint_state_dict(self) -> dict[str, Tensor]:
        """State of everything but the teacher (student + distillation modules), for resumable checkpoints."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_checkpoint_state_dict(self, state: dict[str, Tensor]) -> None:
        """Inverse of :meth:`checkpoint_state_dict` (strict on every non-teacher key)."""
        load_state_strictly(self, state, skip_missing=("teacher.",), what="the distiller")

    def student_state_for_export(self) -> dict[str, Tensor]:
        """The student's own transformers state dict (no adapters, projections or heads)."""
        return self.student.model.state_dict()

    def export_student(self, path: str | Path) -> Path:
        """Save the plain student (``AutoModelForObjectDetection.from_pretrained(path)`` loads it)."""
        path = Path(path)
        self.student.model.save_pretrained(path)
        return path

    # ------------------------------------------------------------------ helpers
    def _teacher_context(self, device_type: str):
        # float32 means float32 even inside an outer mixed-precision autocast region
        if self.teacher_dtype is None:
            return torch.autocast(device_type=device_type, enabled=False)
        return torch.autocast(device_type=device_type, dtype=self.teacher_dtype)

    @torch.no_grad()
    def _probe_level_pairs(self, source: str, size: int) -> list[tuple[int, int]]:
        """Pair feature levels of equal spatial size, from one forward of both models on a blank image."""
        device = next(self.student.parameters()).device
        x = torch.zeros(1, 3, size, size, device=device)
        was_training = self.student.training
        self.student.eval()
        try:
            s = getattr(self.student(x), source)
            t = getattr(self.teacher(x), source)
        finally:
            self.student.train(was_training)
        return level_pairs_by_resolution([tuple(f.shape[-2:]) for f in s], [tuple(f.shape[-2:]) for f in t])

    def teacher_input(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> TeacherInput:
        """The teacher's view of the student's batch (its processor's normalisation and resizing, if any)."""
        if self.teacher_pixels is None:
            return TeacherInput(pixel_values, pixel_mask, None)
        with torch.no_grad():
            return self.teacher_pixels(pixel_values, pixel_mask)

    def teacher_forward(self, pixel_values: Tensor, pixel_mask: Tensor | None,
                        targets: list[dict] | None = None, view: TeacherInput | None = None) -> DetectorOutput:
        """Frozen teacher forward (inference mode, eval mode, float32 outputs that are normal tensors) on the
        student's batch, seen through :meth:`teacher_input` (or the given ``view`` of it); with targets,
        ``assignments`` holds its own GT matching."""
        self.teacher.eval()
        view = view if view is not None else self.teacher_input(pixel_values, pixel_mask)
        pixel_values, pixel_mask = view.pixel_values, view.pixel_mask
        with torch.inference_mode(), self._teacher_context(pixel_values.device.type):
            out = self.teacher(pixel_values, pixel_mask)
        with torch.no_grad():
            out = _to_float(out)
            if self.class_map is not None:
                out.logits = self.class_map(out.logits)
            if targets is not None:
                out.assignments = self.teacher_matcher(out.logits, out.boxes, targets)
        return out

    def _stage_map(self, s_out: DetectorOutput, t_out: DetectorOutput) -> list[int]:
        if t_out.num_stages != self.teacher.num_stages or s_out.num_stages != self.student.num_stages:
            return map_stages(s_out.num_stages, t_out.num_stages, self.cfg.stage_mapping)
        return self.stage_map

    @property
    def step(self) -> int:
        """0-based index of the training step about to run; it only matters under ``cfg.warmup_steps`` / ``decay``
        / ``stop_at`` (:meth:`term_scale`). Set by the engine (``DistillTask.set_step``), ``DistillationTrainer`` or
        a user's loop; never set, it counts the forwards made in training mode (one per step without gradient
        accumulation), so a warm-up cannot stay at its first step's 1/N weight in a loop that does not know of it."""
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        self._step, self._step_given = int(value), True

    def term_scale(self) -> float:
        """Weight of every distillation term at :attr:`step` (:func:`.term_schedule.term_scale`: the warm-up, then
        ``cfg.decay`` to 0 at ``cfg.stop_at`` of :attr:`total_steps`) while training; 1 in eval mode."""
        if not self.training:
            return 1.0
        cfg = self.cfg
        return term_scale(self.step, cfg.warmup_steps, cfg.decay, cfg.stop_at, self.total_steps)

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None, targets: list[dict],
                criterion: Callable | None = None) -> DistillOutput:
        """pixel_values [B, 3, H, W], pixel_mask [B, H, W] (1 = real pixel) or None, targets: B dicts
        (``class_labels`` [T], ``boxes`` [T, 4] normalised cxcywh), criterion: the student's set criterion."""
        if targets is None:
            raise ValueError("Distiller.forward needs the targets (feature quality scores, query prior)")
        scale = self.term_scale()
        if scale == 0.0:  # past distill.stop_at: the student's own step, no teacher
            return self._student_only(pixel_values, pixel_mask, targets, criterion)
        clock = [_now(pixel_values)] if self.first_step_cost is None else None
        with profiling.section("teacher_forward"):
            view = self.teacher_input(pixel_values, pixel_mask)
            t_out = self.teacher_forward(pixel_values, pixel_mask, view=view)
        if clock:
            clock.append(_now(pixel_values))
        s_out, family_loss = self._student_forward(pixel_values, pixel_mask, targets, criterion)
        if clock:
            self.first_step_cost = (clock[1] - clock[0], _now(pixel_values) - clock[1])
            log_first_step_cost(tuple(pixel_values.shape), tuple(view.pixel_values.shape), *self.first_step_cost,
                                self.cfg.teacher_input, self.teacher_pixels)
        ctx = StepContext(s_out, t_out, targets, self._stage_map(s_out, t_out), criterion, self.teacher_matcher,
                          teacher_affine=view.affine)
        # every matching of the step in one solver dispatch (exactly the results of solving them one by one)
        student_gt = solve_step_matchings(ctx, criterion, *self.matching_needs) if self.batch_matchings else None
        if criterion is not None and not family_loss:
            with profiling.section("student_loss"):
                self.student.attach_loss(s_out, targets, criterion, student_gt)
        total = _own_loss(s_out)
        parts = {"student": total}
        loss_dict: dict[str, Tensor] = {k: v.detach() for k, v in s_out.loss_dict.items()}
        for term in self.terms:
            with profiling.section(f"term:{term.name}"):
                term_losses = term(ctx)
            weight = scale * self.term_weights.get(term.name, 1.0)
            for name, value in term_losses.items():
                value = value * weight if weight != 1.0 else value
                total = total + value
                parts[term.name] = parts[term.name] + value if term.name in parts else value
                loss_dict[name] = value.detach()
        t_out.assignments = ctx.cache.get(TEACHER_ASSIGNMENTS)
        self._count_forward()
        return DistillOutput(loss=total, loss_dict=loss_dict, student=s_out, teacher=t_out,
                             matching=ctx.cache.get(MATCHING), stage_map=list(ctx.stage_map), parts=parts)

    def _student_forward(self, pixel_values: Tensor, pixel_mask: Tensor | None, targets: list[dict],
                         criterion: Callable | None) -> tuple[DetectorOutput, bool]:
        """The student's forward and whether it computed its own loss: under the family recipe its forward does
        (with its training-only groups); otherwise the set criterion is attached by the caller."""
        family_loss = isinstance(criterion, FamilyLoss) and self.student.has_family_loss
        with profiling.section("student_forward"):
            s_out = self.student(pixel_values, pixel_mask, targets, criterion) if family_loss else \
                self.student(pixel_values, pixel_mask)
        return s_out, family_loss

    def _count_forward(self) -> None:
        if self.training and not self._step_given:
            self._step += 1  # nobody tells this distiller the step: the next forward is the next step

    def _student_only(self, pixel_values: Tensor, pixel_mask: Tensor | None, targets: list[dict],
                      criterion: Callable | None) -> DistillOutput:
        """A step after ``cfg.stop_at``: the student's own loss only (``teacher`` None, no terms in ``loss_dict``)."""
        s_out, family_loss = self._student_forward(pixel_values, pixel_mask, targets, criterion)
        if criterion is not None and not family_loss:
            with profiling.section("student_loss"):
                self.student.attach_loss(s_out, targets, criterion)
        total = _own_loss(s_out)
        self._count_forward()
        return DistillOutput(loss=total, loss_dict={k: v.detach() for k, v in s_out.loss_dict.items()},
                             student=s_out, teacher=None, parts={"student": total})
