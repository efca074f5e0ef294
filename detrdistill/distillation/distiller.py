"""The :class:`Distiller`: a frozen teacher, a trainable student and the DETRDistill losses, declared from
:class:`~detrdistill.config.DistillConfig`.

One training step (spec §1.6)::

    out = distiller(pixel_values, pixel_mask, targets, criterion)   # -> DistillOutput
    out.loss.backward()                                             # student + adapters/projection/heads only

Total loss = student detection loss (``criterion`` on the student's own queries, every stage)
           + logits distillation (``logits_cls`` / ``logits_bbox`` / ``logits_giou`` [+ ``logits_neg``])
           + feature distillation (``feature``, every teacher stage's mask)
           + query-prior distillation (``query_prior_cls`` / ``_bbox`` / ``_giou``)
           + optional ``contrastive``, ``fitnet``, ``logit_kd``.
Every weight is in the config (defaults = the official values) and every term can be disabled.

The teacher is frozen: ``requires_grad=False``, always in eval mode (``Distiller.train()`` cannot switch it), run
under ``torch.no_grad`` (optionally in bf16 autocast, ``teacher_dtype``).  Its own Hungarian matching against the
GT (``teacher_matcher``, default focal 2 / L1 5 / GIoU 2, or DETR's 1 / 5 / 2 for softmax teachers) gives the
per-stage assignments used by the query prior and by ``variant="pos_neg"``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..config import DistillConfig
from ..errors import CheckpointError, IncompatibleModelsError, UnsupportedSettingError
from ..models.adapters import DetectorAdapter
from ..models.outputs import DetectorOutput
from ..models.query_projection import build_query_projection
from ..ops.matcher import HungarianMatcher
from .baselines import FitNetLoss, LogitKDLoss
from .contrastive import ContrastiveDistillLoss
from .feature import FeatureDistillLoss, level_pairs_by_resolution, quality_scores, target_aware_mask
from .logits import HungarianLogitsDistillLoss, match_student_to_teacher
from .query_prior import QueryPriorLoss
from .stage_mapping import map_stages

__all__ = ["Distiller", "DistillOutput", "check_compatible"]


# ----------------------------------------------------------------------------------------------- compatibility
def _label_map(id2label) -> dict[int, str]:
    return {int(k): str(v) for k, v in dict(id2label or {}).items()}


def check_compatible(teacher: DetectorAdapter, student: DetectorAdapter,
                     dataset_id2label: dict | None = None) -> None:
    """Raise a clear IncompatibleModelsError before training when teacher and student cannot be distilled on this dataset.

    Teacher and student must have the same classes under the same ids (the logits are compared class by class);
    every dataset class must exist in the teacher under the same id.  (A teacher with extra classes the dataset
    lacks is accepted only if the student has them too, since student and teacher maps must be equal.)
    """
    t_map, s_map = _label_map(teacher.config.id2label), _label_map(student.config.id2label)
    if teacher.num_classes != student.num_classes or t_map != s_map:
        diff = sorted(k for k in set(t_map) | set(s_map) if t_map.get(k) != s_map.get(k))
        shown = ", ".join(f"{k}: teacher {t_map.get(k)!r} / student {s_map.get(k)!r}" for k in diff[:5])
        raise IncompatibleModelsError(
            f"teacher ({teacher.num_classes} classes) and student ({student.num_classes} classes) label maps differ "
            f"({len(diff)} ids: {shown}{' ...' if len(diff) > 5 else ''}); distillation compares logits class by "
            f"class, so both must be built for the same id2label")
    if dataset_id2label is not None:
        d_map = _label_map(dataset_id2label)
        bad = sorted(k for k, v in d_map.items() if t_map.get(k) != v)
        if bad:
            shown = ", ".join(f"{k}: {d_map[k]!r} (teacher: {t_map.get(k)!r})" for k in bad[:5])
            raise IncompatibleModelsError(
                f"the dataset has {len(bad)} class(es) the teacher lacks under the same id ({shown}"
                f"{' ...' if len(bad) > 5 else ''}); use a teacher trained on this label map")


# ----------------------------------------------------------------------------------------------- output
@dataclass
class DistillOutput:
    """loss:      student detection loss + every weighted distillation term (with grad).
    loss_dict: each component, detached: the criterion's ``cls`` / ``bbox`` / ``giou`` and the active ones of
               ``logits_cls, logits_bbox, logits_giou, logits_neg, feature, query_prior_cls, query_prior_bbox,
               query_prior_giou, contrastive, fitnet, logit_kd``.
    student / teacher: the two DetectorOutputs; matching: [L_S, B, N_S] student -> teacher query (or None);
    stage_map: teacher stage of each student stage.
    """
    loss: Tensor
    loss_dict: dict[str, Tensor]
    student: DetectorOutput
    teacher: DetectorOutput
    matching: Tensor | None = None
    stage_map: list[int] = field(default_factory=list)


def _to_float(out: DetectorOutput) -> DetectorOutput:
    """Teacher outputs produced under bf16 autocast -> float32 (in place)."""
    f = lambda t: t.float() if isinstance(t, Tensor) and t.is_floating_point() and t.dtype != torch.float32 else t  # noqa: E731
    out.logits, out.boxes, out.embeddings = f(out.logits), f(out.boxes), f(out.embeddings)
    out.encoder_inputs = [f(t) for t in out.encoder_inputs]
    out.encoder_outputs = [f(t) for t in out.encoder_outputs]
    if out.queries is not None:
        q = out.queries
        q.content, q.position, q.reference = f(q.content), f(q.position), f(q.reference)
    return out


# ----------------------------------------------------------------------------------------------- distiller
class Distiller(nn.Module):
    """Teacher (frozen) + student + DETRDistill losses.

    Args:
        teacher, student: detector adapters (``detrdistill.models.adapters.get_adapter``).
        cfg: the ``distill`` config section (defaults: the official DETRDistill setting).
        dataset_id2label: when given, checked against the teacher's classes (:func:`check_compatible`).
        teacher_matcher: callable ``(logits, boxes, targets) -> [L_T, B, N_T]`` giving the teacher's own GT
            assignment (default: a :class:`~detrdistill.ops.matcher.HungarianMatcher` for its class activation).
        probe_size: image side of the one-off probe forward used to pair feature levels by resolution when the
            two models have different level counts.
    """

    def __init__(self, teacher: DetectorAdapter, student: DetectorAdapter, cfg: DistillConfig | None = None,
                 dataset_id2label: dict | None = None, teacher_matcher: Callable | None = None,
                 probe_size: int = 256):
        super().__init__()
        cfg = cfg if cfg is not None else DistillConfig()
        check_compatible(teacher, student, dataset_id2label)
        self.cfg = cfg
        self.teacher = teacher
        self.student = student
        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self.teacher_dtype = {"float32": None, "bfloat16": torch.bfloat16}[cfg.teacher_dtype]
        self.stage_map = map_stages(student.num_stages, teacher.num_stages, cfg.stage_mapping)

        if teacher_matcher is None:
            softmax = teacher.class_activation == "softmax"
            teacher_matcher = HungarianMatcher(class_cost=1.0 if softmax else 2.0, bbox_cost=5.0, giou_cost=2.0,
                                               class_loss="ce" if softmax else "focal")
        self.teacher_matcher = teacher_matcher

        lc = cfg.logits
        self.logits_loss = HungarianLogitsDistillLoss(
            class_weight=lc.class_weight, bbox_weight=lc.bbox_weight, giou_weight=lc.giou_weight,
            variant=lc.variant, neg_weight=lc.neg_weight, pos_threshold=lc.pos_threshold) if lc.enabled else None

        level_pairs = None
        if (cfg.feature.enabled or cfg.fitnet.enabled) and student.num_feature_levels != teacher.num_feature_levels:
            level_pairs = self._probe_level_pairs(cfg.feature.source, probe_size)
        s_ch, t_ch = student.feature_channels, teacher.feature_channels
        self.feature_loss = FeatureDistillLoss(s_ch, t_ch, cfg.feature.weight, level_pairs) \
            if cfg.feature.enabled else None
        self.fitnet_loss = FitNetLoss(s_ch, t_ch, cfg.fitnet.weight, level_pairs) if cfg.fitnet.enabled else None

        qc = cfg.query_prior
        if qc.enabled and not qc.reuse_memory:
            raise UnsupportedSettingError(
                "distill.query_prior.reuse_memory=false (re-running the student encoder for the teacher-query group, "
                "as the official code does) is not supported: the adapters decode extra query groups over the "
                "memory of the student's own forward only (it differs from a re-run only by encoder dropout); "
                "set distill.query_prior.reuse_memory=true")
        self.query_projection = build_query_projection(teacher, student) if qc.enabled else None
        self.query_prior_loss = QueryPriorLoss(weight=qc.weight) if qc.enabled else None

        cc = cfg.contrastive
        self.contrastive_loss = ContrastiveDistillLoss(student.d_model, teacher.d_model, cc.proj_dim,
                                                       cc.temperature, cc.weight) if cc.enabled else None
        kc = cfg.logit_kd
        self.logit_kd_loss = LogitKDLoss(kc.temperature, kc.weight) if kc.enabled else None

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
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise CheckpointError(f"checkpoint does not fit the distiller (missing {missing[:3]}, unexpected "
                                  f"{list(unexpected)[:3]}); was it written with another config?")

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

    def teacher_forward(self, pixel_values: Tensor, pixel_mask: Tensor | None,
                        targets: list[dict] | None = None) -> DetectorOutput:
        """Frozen teacher forward (no grad, eval mode); with targets, ``assignments`` holds its GT matching."""
        self.teacher.eval()
        with torch.no_grad():
            with self._teacher_context(pixel_values.device.type):
                out = self.teacher(pixel_values, pixel_mask)
            out = _to_float(out)
            if targets is not None and self._needs_teacher_assignments():
                out.assignments = self.teacher_matcher(out.logits, out.boxes, targets)
        return out

    def _needs_teacher_assignments(self) -> bool:
        return self.query_prior_loss is not None or (
            self.logits_loss is not None and self.logits_loss.variant == "pos_neg")

    # ------------------------------------------------------------------ forward
    def forward(self, pixel_values: Tensor, pixel_mask: Tensor | None, targets: list[dict],
                criterion: Callable | None = None) -> DistillOutput:
        """pixel_values [B, 3, H, W], pixel_mask [B, H, W] (1 = real pixel) or None, targets: B dicts
        (``class_labels`` [T], ``boxes`` [T, 4] normalised cxcywh), criterion: the student's set criterion."""
        if targets is None:
            raise ValueError("Distiller.forward needs the targets (feature quality scores, query prior)")
        t_out = self.teacher_forward(pixel_values, pixel_mask, targets)
        s_out = self.student(pixel_values, pixel_mask, targets, criterion)
        s_act, t_act = s_out.class_activation, t_out.class_activation
        stage_map = self.stage_map
        if t_out.num_stages != self.teacher.num_stages or s_out.num_stages != self.student.num_stages:
            stage_map = map_stages(s_out.num_stages, t_out.num_stages, self.cfg.stage_mapping)

        terms: dict[str, Tensor] = {}
        loss_dict: dict[str, Tensor] = {k: v.detach() for k, v in s_out.loss_dict.items()}
        total = s_out.loss if s_out.loss is not None else s_out.logits.new_zeros(())

        matching = None
        if self.logits_loss is not None:
            lo = self.logits_loss(s_out.logits, s_out.boxes, t_out.logits, t_out.boxes, stage_map,
                                  student_activation=s_act, teacher_activation=t_act,
                                  teacher_assignments=t_out.assignments, targets=targets)
            terms.update(lo.losses)
            matching = lo.matching

        if self.feature_loss is not None or self.fitnet_loss is not None:
            source = self.cfg.feature.source
            s_feats, t_feats = getattr(s_out, source), getattr(t_out, source)
            valid = t_out.feature_masks or None
            if self.feature_loss is not None:
                fc = self.cfg.feature
                scores, idx = quality_scores(t_out.logits, t_out.boxes, targets, fc.top_k, t_act)
                masks = target_aware_mask(t_out.embeddings, t_feats, scores, idx, valid, fc.mask_floor)
                terms["feature"] = self.feature_loss(s_feats, t_feats, masks, valid)
            if self.fitnet_loss is not None:
                terms["fitnet"] = self.fitnet_loss(s_feats, t_feats, valid)

        if self.query_prior_loss is not None:
            group = t_out.queries if t_out.queries is not None else self.teacher.query_table()
            group = self.query_projection(group)
            g_out = self.student.decode_group(s_out, group)
            qp = self.query_prior_loss(g_out, t_out.assignments, targets, stage_map, criterion)
            total = total + qp.loss
            loss_dict.update(qp.loss_dict)

        if self.contrastive_loss is not None:
            if matching is None:
                matching = match_student_to_teacher(s_out.logits, s_out.boxes, t_out.logits, t_out.boxes, stage_map,
                                                    s_act, t_act)
            terms["contrastive"] = self.contrastive_loss(s_out.embeddings, t_out.embeddings, matching, stage_map)

        if self.logit_kd_loss is not None:
            last = None
            if matching is not None and self.logits_loss is not None and self.logits_loss.variant == "all" \
                    and stage_map[-1] == t_out.num_stages - 1:
                last = matching[-1]
            terms["logit_kd"] = self.logit_kd_loss(s_out.logits, s_out.boxes, t_out.logits, t_out.boxes,
                                                   student_activation=s_act, teacher_activation=t_act, matching=last)

        for k, v in terms.items():
            total = total + v
            loss_dict[k] = v.detach()
        return DistillOutput(loss=total, loss_dict=loss_dict, student=s_out, teacher=t_out, matching=matching,
                             stage_map=list(stage_map))
