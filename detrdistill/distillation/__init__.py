"""DETRDistill losses (Chang et al., ICCV 2023) and the :class:`Distiller` module.

* :mod:`.stage_mapping`  -- :func:`map_stages`, student decoder stage -> teacher stage
* :mod:`.logits`         -- :class:`HungarianLogitsDistillLoss` (Hungarian-matching logits distillation)
* :mod:`.feature`        -- :func:`quality_scores`, :func:`target_aware_mask`, :class:`FeatureDistillLoss`
* :mod:`.query_prior`    -- :class:`QueryPriorLoss` (query-prior assignment distillation)
* :mod:`.contrastive`    -- :class:`ContrastiveDistillLoss` (the official code's extra InfoNCE, off by default)
* :mod:`.baselines`      -- :class:`FitNetLoss`, :class:`LogitKDLoss`
* :mod:`.connectors`     -- feature level adapters, query projection, contrastive projection heads
* :mod:`.context`        -- :class:`StepContext` (one step's outputs, lazily shared matchings / assignments)
* :mod:`.terms`          -- the term contract and the declared wiring (:data:`TERMS`)
* :mod:`.distiller`      -- :class:`Distiller`, :class:`DistillOutput`, :func:`check_compatible`
* :mod:`.detr_distiller` -- :class:`DETRDistiller`, the public API (transformers models, folders or hub ids; labels
  in transformers or COCO format), exported as ``detrdistill.DETRDistiller``
* :mod:`.task`           -- :class:`DistillTask`, the DETRDistiller behind the engine's task interface
"""
from .baselines import FitNetLoss, LogitKDLoss
from .context import StepContext
from .contrastive import ContrastiveDistillLoss
from .distiller import DistillOutput, Distiller, check_compatible
from .feature import (FeatureDistillLoss, level_pairs_by_resolution, quality_scores, target_aware_mask)
from .logits import HungarianLogitsDistillLoss, LogitsDistillOutput, match_student_to_teacher
from .query_prior import QueryPriorLoss, QueryPriorOutput
from .stage_mapping import map_stages
from .terms import TERMS, DistillTerm, build_terms

__all__ = [
    "map_stages",
    "HungarianLogitsDistillLoss", "LogitsDistillOutput", "match_student_to_teacher",
    "quality_scores", "target_aware_mask", "FeatureDistillLoss", "level_pairs_by_resolution",
    "QueryPriorLoss", "QueryPriorOutput",
    "ContrastiveDistillLoss",
    "FitNetLoss", "LogitKDLoss",
    "Distiller", "DistillOutput", "check_compatible",
    "StepContext", "DistillTerm", "TERMS", "build_terms",
]
