"""The distillation-term contract: terms composed from the config, named losses, shared per-step context."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig
from detrdistill.distillation import Distiller
from detrdistill.distillation.distiller import build_teacher_matcher
from detrdistill.distillation.terms import TERMS

from .test_distiller import DETECTION_KEYS, batch, criterion, make, model_cfg, teacher  # noqa: F401

ONLY = {name: {"enabled": False} for name, _ in TERMS}


class CountingMatcher:
    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __call__(self, *args):
        self.calls += 1
        return self.inner(*args)


@pytest.mark.parametrize("name,keys", [("logits", {"logits_cls", "logits_bbox", "logits_giou"}), ("feature", {"feature"}),
                                       ("query_prior", {"query_prior_cls", "query_prior_bbox", "query_prior_giou"}),
                                       ("logit_kd", {"logit_kd"})])
def test_each_term_alone_adds_exactly_its_keys(teacher, batch, criterion, name, keys):  # noqa: F811
    cfg = DistillConfig(**{**ONLY, name: {"enabled": True}})
    dist = Distiller(teacher, make(model_cfg()), cfg)
    assert [t.name for t in dist.terms] == [name]
    out = dist(*batch, criterion)
    assert set(out.loss_dict) == DETECTION_KEYS | keys
    assert all(out.loss_dict[k] > 0 for k in keys)
    assert torch.allclose(out.loss, sum(out.loss_dict.values()), rtol=1e-5)


def test_disabled_terms_build_nothing_and_add_no_key(teacher, batch, criterion):  # noqa: F811
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(**ONLY))
    assert dist.terms == []
    assert not any(n.startswith(("feature_loss", "query_projection", "contrastive_loss"))
                   for n, _ in dist.named_parameters())
    assert set(dist(*batch, criterion).loss_dict) == DETECTION_KEYS


def test_teacher_assignment_is_computed_once_and_shared(teacher, batch, criterion):  # noqa: F811
    matcher = CountingMatcher(build_teacher_matcher(DistillConfig().teacher_matcher, teacher.class_activation))
    cfg = DistillConfig(logits={"variant": "pos_neg"})  # pos_neg logits AND query prior both need it
    dist = Distiller(teacher, make(model_cfg()), cfg, teacher_matcher=matcher)
    out = dist(*batch, criterion)
    assert matcher.calls == 1 and out.teacher.assignments is not None
    off = Distiller(teacher, make(model_cfg()), DistillConfig(query_prior={"enabled": False}),
                    teacher_matcher=matcher)
    off(*batch, criterion)
    assert matcher.calls == 1  # no term asked for it: never computed


def test_teacher_matcher_costs_come_from_the_config(teacher):  # noqa: F811
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(teacher_matcher={"class_cost": 3.0, "giou_cost": 0.5}))
    m = dist.teacher_matcher
    assert (m.class_cost, m.bbox_cost, m.giou_cost) == (3.0, 5.0, 0.5)
    default = Distiller(teacher, make(model_cfg())).teacher_matcher
    assert default.class_cost == 2.0  # focal teacher: Deformable DETR's cost when unset


def test_the_step_solves_ahead_what_the_terms_declare():
    """``step_needs`` reads the terms' declarations, not their types: a new term is served by declaring its needs."""
    from detrdistill.distillation.logits import DEFAULT_MATCH_COSTS, HungarianLogitsDistillLoss, MatchCosts
    from detrdistill.distillation.step_matching import step_needs
    from detrdistill.distillation.terms import ContrastiveTerm, DistillTerm, LogitsTerm, QueryPriorTerm

    class ReadsAMatching(DistillTerm):
        matching_costs = MatchCosts(3.0, 4.0, 5.0)

    class ReadsTheTeacherAssignment(DistillTerm):
        needs_teacher_assignments = True

    assert step_needs([ReadsTheTeacherAssignment({}), ReadsAMatching({})]) == (True, True, (3.0, 4.0, 5.0))
    assert step_needs([ReadsAMatching({}), DistillTerm({})]) == (False, True, (3.0, 4.0, 5.0))
    # the declared defaults of the library's terms
    assert ContrastiveTerm.matching_costs == DEFAULT_MATCH_COSTS == (1.0, 5.0, 2.0)
    assert QueryPriorTerm.needs_teacher_assignments and not ContrastiveTerm.needs_teacher_assignments
    full = LogitsTerm(HungarianLogitsDistillLoss(class_cost=2.0))
    assert (full.needs_teacher_assignments, full.matching_costs, full.shares_matching) == (False, (2.0, 5.0, 2.0), True)
    pos_neg = LogitsTerm(HungarianLogitsDistillLoss(variant="pos_neg"))
    # it publishes its own two-part matching: a contrastive term after it reads that one, nothing is solved ahead
    assert step_needs([pos_neg, ReadsAMatching({})]) == (True, False, DEFAULT_MATCH_COSTS)
