"""Distillation terms: one contract, composed from the config.

A term is built from its config section (``distill.<name>``) when that section is enabled, and called once per
step with the :class:`~detrdistill.distillation.context.StepContext`::

    term(ctx) -> dict[str, Tensor]     # named, weighted losses with grad; the keys become loss_dict entries

A term owns its loss module and connectors (``term.modules``: attribute name -> module); the distiller registers
them under those names, so they are trained and checkpointed with the student and never exported. Terms run in
the order of :data:`TERMS`; a term may publish what it computed anyway (the logits term its matching) for the
terms after it through ``ctx.share``. A disabled term is never built and contributes no key.

A term declares the matchings it reads (:class:`DistillTerm`: ``needs_teacher_assignments``, ``matching_costs``,
``shares_matching``), so the step solves them all ahead in one call
(:func:`~detrdistill.distillation.step_matching.step_needs`).

Adding a term: a config section with ``enabled`` under :class:`~detrdistill.config.DistillConfig`, a class here
with ``name``, ``modules`` and ``__call__(ctx)``, and its builder in :data:`TERMS`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from torch import Tensor, nn

from .. import profiling
from ..config import DistillConfig
from ..errors import UnsupportedSettingError
from ..models.family_loss import FamilyLoss
from ..models.outputs import GroupOutput
from ..ops.criterion import batch_num_boxes
from .baselines import FitNetLoss, LogitKDLoss
from .connectors import build_query_projection
from .context import FULL_COST_MATCHING, MATCHING, StepContext
from .contrastive import ContrastiveDistillLoss
from .feature import FeatureDistillLoss, quality_scores, target_aware_mask
from .logits import DEFAULT_MATCH_COSTS, HungarianLogitsDistillLoss, MatchCosts
from .query_prior import QueryPriorLoss, teacher_prediction_losses

log = logging.getLogger("detrdistill")

__all__ = ["DistillTerm", "TermEnv", "TERMS", "build_terms", "LogitsTerm", "FeatureTerm", "FitNetTerm",
           "QueryPriorTerm", "ContrastiveTerm", "LogitKDTerm"]


@dataclass
class TermEnv:
    """What a term builder may read: the config, both adapters and the feature level pairing (None = i <-> i)."""
    cfg: DistillConfig
    teacher: nn.Module
    student: nn.Module
    level_pairs: list[tuple[int, int]] | None = None

    @cached_property
    def group_norm_features(self) -> bool:
        """``distill.feature.normalize`` resolved once for the feature and FitNet builders (see
        ``normalize_features``)."""
        return normalize_features(self)


class DistillTerm:
    """Base of the terms: ``name`` (config section), ``modules`` (attribute -> trainable module) and the call, and
    what it reads of the step's matchings (solved ahead, together, by the distiller):

    * ``needs_teacher_assignments``: the teacher's own GT assignment (``ctx.teacher_assignments()``);
    * ``matching_costs``: the class / bbox / GIoU costs of the student -> teacher matching it reads
      (``ctx.matching()`` or the cache), None when it reads none;
    * ``shares_matching``: it publishes a student -> teacher matching of its own (``ctx.share(MATCHING, ...)``)
      that the later terms read, so nothing needs to be solved ahead for them.
    """
    name = ""
    needs_teacher_assignments: bool = False
    matching_costs: MatchCosts | None = None
    shares_matching: bool = False

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        raise NotImplementedError


class LogitsTerm(DistillTerm):
    """Hungarian-matching logits distillation (``logits_cls`` / ``_bbox`` / ``_giou`` [+ ``logits_neg``])."""
    name = "logits"

    shares_matching = True

    def __init__(self, loss: HungarianLogitsDistillLoss):
        super().__init__({"logits_loss": loss})
        self.loss = loss
        pos_neg = loss.variant == "pos_neg"  # its own two-part matching, on the teacher's positives
        self.needs_teacher_assignments = pos_neg
        self.matching_costs = None if pos_neg else loss.costs

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        s, t = ctx.student, ctx.teacher
        pos_neg = self.loss.variant == "pos_neg"
        out = self.loss(s.logits, s.boxes, t.logits, t.boxes, ctx.stage_map,
                        student_activation=s.class_activation, teacher_activation=t.class_activation,
                        teacher_assignments=ctx.teacher_assignments() if pos_neg else None, targets=ctx.targets,
                        matching=None if pos_neg else ctx.cache.get(MATCHING))
        ctx.share(MATCHING, out.matching)
        if not pos_neg:
            ctx.share(FULL_COST_MATCHING, out.matching)
        return out.losses


class FeatureTerm(DistillTerm):
    """Target-aware feature distillation on ``distill.feature.source`` (``feature``)."""
    name = "feature"

    def __init__(self, loss: FeatureDistillLoss, source: str, top_k: int, mask_floor: float):
        super().__init__({"feature_loss": loss})
        self.loss, self.source, self.top_k, self.mask_floor = loss, source, top_k, mask_floor

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        s, t = ctx.student, ctx.teacher
        t_feats, valid = getattr(t, self.source), t.feature_masks or None
        with profiling.section("feature_mask"):
            scores, idx = quality_scores(t.logits, t.boxes, ctx.targets, self.top_k, t.class_activation)
            masks = target_aware_mask(t.embeddings, t_feats, scores, idx, valid, self.mask_floor)
        return {"feature": self.loss(getattr(s, self.source), t_feats, masks, valid, ctx.teacher_affine)}


class FitNetTerm(DistillTerm):
    """Unmasked feature MSE baseline (``fitnet``), on the same features as the feature term."""
    name = "fitnet"

    def __init__(self, loss: FitNetLoss, source: str):
        super().__init__({"fitnet_loss": loss})
        self.loss, self.source = loss, source

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        s, t = ctx.student, ctx.teacher
        return {"fitnet": self.loss(getattr(s, self.source), getattr(t, self.source), t.feature_masks or None,
                                    ctx.teacher_affine)}


class QueryPriorTerm(DistillTerm):
    """The student decodes the (projected) teacher queries, supervised by the teacher's own GT assignment
    (``query_prior_cls`` / ``_bbox`` / ``_giou``) and, with ``teacher_predictions`` (a logits loss), by the teacher's
    own predictions for the same queries too (``query_kd_cls`` / ``_bbox`` / ``_giou``)."""
    name = "query_prior"
    needs_teacher_assignments = True

    def __init__(self, loss: QueryPriorLoss, projection: nn.Module, teacher: nn.Module, student: nn.Module,
                 group_loss: str = "family", teacher_predictions: HungarianLogitsDistillLoss | None = None):
        super().__init__({"query_projection": projection, "query_prior_loss": loss})
        self.loss, self.projection, self.group_loss = loss, projection, group_loss
        self.teacher_predictions = teacher_predictions
        self._adapters = (teacher, student)  # a tuple: the adapters are the distiller's, not this term's modules

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        teacher, student = self._adapters
        group = ctx.teacher.queries if ctx.teacher.queries is not None else teacher.query_table()
        # the teacher's first-stage boxes, where a student reference is derived from them (query_projection.py)
        boxes = ctx.teacher.boxes[0] if self.projection.needs_boxes else None
        with profiling.section("query_prior_decode"):
            g_out = student.decode_group(ctx.student, self.projection(group, boxes=boxes))
        losses = self._assignment_losses(ctx, g_out)
        if self.teacher_predictions is not None:
            losses.update(teacher_prediction_losses(self.teacher_predictions, g_out, ctx.teacher, ctx.stage_map,
                                                    ctx.student.class_activation))
        return losses

    def _assignment_losses(self, ctx: StepContext, g_out: GroupOutput) -> dict[str, Tensor]:
        """The group supervised with the teacher's GT assignment, by the set criterion or the family's loss."""
        student = self._adapters[1]
        family = (self.group_loss != "set" and isinstance(ctx.criterion, FamilyLoss) and student.has_group_family_loss)
        if not family:
            return self.loss(g_out, ctx.teacher_assignments(), ctx.targets, ctx.stage_map, ctx.criterion).losses
        num_boxes = batch_num_boxes(ctx.targets)  # once: across processes it is a collective
        if self.group_loss == "family":  # the group trained as the family trains its own queries
            assignments = self.loss.stage_assignments(g_out, ctx.teacher_assignments(), ctx.stage_map)
            return self._weighted(student.group_family_losses(g_out, ctx.targets, assignments, num_boxes))
        out = self.loss(g_out, ctx.teacher_assignments(), ctx.targets, ctx.stage_map, ctx.criterion, num_boxes)
        # set_distributions: plus the family's losses on the group's box distributions (D-FINE / DEIMv2: FGL + DDF)
        extra = student.group_family_losses(g_out, ctx.targets, out.assignments, num_boxes, distributions_only=True)
        return {**out.losses, **self._weighted(extra)}

    def _weighted(self, losses: dict[str, Tensor]) -> dict[str, Tensor]:
        return {f"{self.loss.prefix}{k}": self.loss.weight * v for k, v in losses.items()}


class ContrastiveTerm(DistillTerm):
    """InfoNCE between matched student / teacher decoder embeddings (``contrastive``)."""
    name = "contrastive"
    matching_costs = DEFAULT_MATCH_COSTS  # ctx.matching()

    def __init__(self, loss: ContrastiveDistillLoss):
        super().__init__({"contrastive_loss": loss})
        self.loss = loss

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        return {"contrastive": self.loss(ctx.student.embeddings, ctx.teacher.embeddings, ctx.matching(),
                                         ctx.stage_map)}


class LogitKDTerm(DistillTerm):
    """Vanilla logit KD on matched last-stage queries (``logit_kd``); reuses the logits term's full-cost matching
    when it paired the two last stages."""
    name = "logit_kd"

    def __init__(self, loss: LogitKDLoss):
        super().__init__({"logit_kd_loss": loss})
        self.loss = loss

    def __call__(self, ctx: StepContext) -> dict[str, Tensor]:
        s, t = ctx.student, ctx.teacher
        full = ctx.cache.get(FULL_COST_MATCHING)
        last = full[-1] if full is not None and ctx.stage_map[-1] == t.num_stages - 1 else None
        return {"logit_kd": self.loss(s.logits, s.boxes, t.logits, t.boxes, student_activation=s.class_activation,
                                      teacher_activation=t.class_activation, matching=last)}


# ----------------------------------------------------------------------------------------------- builders
def _logits_loss(lc, scale: float = 1.0, variant: str | None = None) -> HungarianLogitsDistillLoss:
    """The logits loss of ``distill.logits`` (``lc``), its three weights times ``scale``; ``variant`` overrides
    ``lc.variant`` (the consistent-query targets pair slot for slot, which only ``"all"`` takes)."""
    return HungarianLogitsDistillLoss(
        class_weight=scale * lc.class_weight, bbox_weight=scale * lc.bbox_weight, giou_weight=scale * lc.giou_weight,
        variant=variant or lc.variant, neg_weight=lc.neg_weight, pos_threshold=lc.pos_threshold,
        class_loss=lc.class_loss, focal_gamma=lc.focal_gamma, box_weighting=lc.box_weighting)


def _logits(env: TermEnv) -> DistillTerm:
    return LogitsTerm(_logits_loss(env.cfg.logits))


def normalize_features(env: TermEnv) -> bool:
    """``distill.feature.normalize`` resolved: 'auto' normalises when either model's ``encoder_inputs`` (the source
    in use) come from a projection without a normalisation layer (``normalized_encoder_inputs``)."""
    fc = env.cfg.feature
    if fc.normalize != "auto":
        return fc.normalize == "group"
    plain = [a.family for a in (env.teacher, env.student) if not a.normalized_encoder_inputs]
    if fc.source != "encoder_inputs" or not plain:
        return False
    log.info("distill.feature.normalize=auto: %s encoder inputs have no normalisation layer; both sides of the "
             "feature terms are GroupNorm'ed (parameter-free) before the MSE", " and ".join(sorted(set(plain))))
    return True


def _feature(env: TermEnv) -> DistillTerm:
    fc = env.cfg.feature
    loss = FeatureDistillLoss(env.student.feature_channels, env.teacher.feature_channels, fc.weight, env.level_pairs,
                              normalize=env.group_norm_features)
    return FeatureTerm(loss, fc.source, fc.top_k, fc.mask_floor)


def _fitnet(env: TermEnv) -> DistillTerm:
    loss = FitNetLoss(env.student.feature_channels, env.teacher.feature_channels, env.cfg.fitnet.weight,
                      env.level_pairs, normalize=env.group_norm_features)
    return FitNetTerm(loss, env.cfg.feature.source)


def _query_prior(env: TermEnv) -> DistillTerm:
    if not env.cfg.query_prior.reuse_memory:
        raise UnsupportedSettingError(
            "distill.query_prior.reuse_memory=false (re-running the student encoder for the teacher-query group, "
            "as the official code does) is not supported: the adapters decode extra query groups over the "
            "memory of the student's own forward only (it differs from a re-run only by encoder dropout); "
            "set distill.query_prior.reuse_memory=true")
    qc, w = env.cfg.query_prior, env.cfg.query_prior.teacher_predictions_weight
    consistent = _logits_loss(env.cfg.logits, scale=w, variant="all") if w > 0 else None
    return QueryPriorTerm(QueryPriorLoss(weight=qc.weight),
                          build_query_projection(env.teacher, env.student, qc.reference),
                          env.teacher, env.student, qc.group_loss, consistent)


def _contrastive(env: TermEnv) -> DistillTerm:
    cc = env.cfg.contrastive
    return ContrastiveTerm(ContrastiveDistillLoss(env.student.d_model, env.teacher.d_model, cc.proj_dim,
                                                  cc.temperature, cc.weight))


def _logit_kd(env: TermEnv) -> DistillTerm:
    kc = env.cfg.logit_kd
    return LogitKDTerm(LogitKDLoss(kc.temperature, kc.weight))


# the declared wiring, in step order: config section -> builder (called only when the section is enabled)
TERMS: tuple[tuple[str, Callable[[TermEnv], DistillTerm]], ...] = (
    ("logits", _logits), ("feature", _feature), ("fitnet", _fitnet), ("query_prior", _query_prior),
    ("contrastive", _contrastive), ("logit_kd", _logit_kd))


def build_terms(env: TermEnv) -> list[DistillTerm]:
    """The enabled terms of ``env.cfg``, in step order."""
    return [build(env) for name, build in TERMS if getattr(env.cfg, name).enabled]
