"""Map a teacher's query group to the student's query form (DETRDistill's query-prior distillation input).

Families describe their decoder queries differently (``DetectorAdapter.query_form``):

================  ==========================================
DETR, Cond. DETR  ``position``
DAB-DETR          ``reference`` (4-d anchors)
Deformable DETR   ``content`` + ``position``
RT-DETR, AdaMixer ``content`` + ``reference`` (4-d boxes)
================  ==========================================

``QueryProjection`` turns a teacher group into the student's form:

* a field both have: ``content`` / ``position`` through ``nn.Linear(teacher_d, student_d)`` when the widths differ
  (identity otherwise); ``reference`` passed through (a 4-d box gives its centre to a 2-d reference);
* a field the student needs and the teacher lacks is **derived**, with a small trainable module (a connector:
  trained with the student, never exported):

  - ``position`` from the teacher's ``reference``: sine embedding of the box (as DAB-DETR derives its positional
    queries from anchors) -> ``Linear - ReLU - Linear`` to the student's width;
  - ``reference`` from the teacher's boxes (``from_teacher_boxes``, the default of :func:`build_query_projection`):
    the box the teacher's first decoder stage predicts for each of its queries on the image (detached; passed as
    ``forward(group, boxes=...)``), so the student's decoder starts each teacher query where the teacher placed it;
    or learned (``from_position`` / ``from_content``): ``Linear(teacher_d, 4)`` -> sigmoid (as Deformable DETR
    derives its reference points), which starts untrained: from a Deformable teacher into an RT-DETR student its
    query-prior gradient was 11x the student's own at step 1 (docs/distillation.md);
  - ``content`` as zeros (DETR's decoder starts from an empty content query);
* fields the student does not use are dropped (None).

``build_query_projection(teacher_adapter, student_adapter)`` reads both forms, decides the derivations (logged in
one line) and refuses only what cannot be derived.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import IncompatibleQueriesError
from .outputs import QueryGroup

__all__ = ["QueryProjection", "build_query_projection", "IncompatibleQueriesError", "box_sine_embedding"]

log = logging.getLogger("detrdistill")

_PROJECTABLE = ("content", "position")
_DERIVATIONS = {"content": ("zeros",), "position": ("from_reference",),
                "reference": ("from_teacher_boxes", "from_position", "from_content")}


def box_sine_embedding(reference: Tensor, feats_per_coord: int, temperature: float = 10000.0) -> Tensor:
    """[..., N, k] coordinates in [0, 1] -> [..., N, k * feats_per_coord] sine/cosine embedding (2π scale)."""
    half = feats_per_coord // 2
    dim_t = temperature ** (torch.arange(half, device=reference.device, dtype=torch.float32) / max(half, 1))
    x = reference.float()[..., None] * (2 * math.pi) / dim_t                     # [..., N, k, half]
    return torch.cat([x.sin(), x.cos()], -1).flatten(-2).to(reference.dtype)


class QueryProjection(nn.Module):
    """teacher QueryGroup -> student QueryGroup.

    teacher_d / student_d: the two widths; fields: the student's width fields (``content``, ``position``) to output;
    keep_reference: output a reference (the student's decoder takes one); derive: ``{field: how}`` for student
    fields the teacher lacks (see the module docstring); reference_dim: the student's reference size (2 or 4).
    """

    def __init__(self, teacher_d: int, student_d: int, fields: Sequence[str] = ("content", "position"),
                 keep_reference: bool = True, derive: dict[str, str] | None = None, reference_dim: int = 4):
        super().__init__()
        bad = [f for f in fields if f not in _PROJECTABLE]
        if bad:
            raise ValueError(f"QueryProjection fields must be among {_PROJECTABLE}, got {bad}")
        self.derive = dict(derive or {})
        for f, how in self.derive.items():
            if how not in _DERIVATIONS.get(f, ()):
                raise ValueError(f"QueryProjection cannot derive {f!r} {how!r}; choices {_DERIVATIONS.get(f, ())}")
        self.teacher_d, self.student_d = int(teacher_d), int(student_d)
        self.fields = tuple(fields)
        self.keep_reference = keep_reference
        self.reference_dim = int(reference_dim)
        self.proj = nn.ModuleDict({
            f: (nn.Linear(self.teacher_d, self.student_d) if self.teacher_d != self.student_d else nn.Identity())
            for f in self.fields if f not in self.derive
        })
        self.derived = nn.ModuleDict()
        if self.derive.get("position") == "from_reference":
            self.sine_feats = max(2, 2 * (self.student_d // 4))
            self.derived["position"] = nn.Sequential(nn.Linear(4 * self.sine_feats, self.student_d), nn.ReLU(),
                                                     nn.Linear(self.student_d, self.student_d))
        if self.derive.get("reference") in ("from_position", "from_content"):
            self.derived["reference"] = nn.Linear(self.teacher_d, self.reference_dim)

    @property
    def needs_boxes(self) -> bool:
        """True when :meth:`forward` needs the teacher's first-stage boxes of the group's queries."""
        return self.keep_reference and self.derive.get("reference") == "from_teacher_boxes"

    def forward(self, group: QueryGroup, boxes: Tensor | None = None) -> QueryGroup:
        """group: the teacher's queries ([N, .] or [B, N, .]); boxes [B, N, 4]: the teacher's first-stage boxes of
        those queries (normalised cxcywh), needed when :attr:`needs_boxes`."""
        out: dict[str, Tensor | None] = {f: None for f in _PROJECTABLE}
        for f in self.fields:
            how = self.derive.get(f)
            if how == "zeros":
                like = next(t for t in (group.content, group.position, group.reference) if t is not None)
                out[f] = like.new_zeros(*like.shape[:-1], self.student_d)
            elif how == "from_reference":
                ref = self._need(group, "reference")
                if ref.shape[-1] == 2:  # a point: a zero-size box at it
                    ref = torch.cat([ref, torch.zeros_like(ref)], -1)
                out[f] = self.derived["position"](box_sine_embedding(ref, self.sine_feats))
            else:
                t = self._need(group, f)
                if t.shape[-1] != self.teacher_d:
                    raise ValueError(f"QueryProjection: group.{f} has width {t.shape[-1]}, expected {self.teacher_d}")
                out[f] = self.proj[f](t)
        reference = None
        if self.keep_reference:
            how = self.derive.get("reference")
            if how == "from_teacher_boxes":
                if boxes is None:
                    raise ValueError("QueryProjection: the reference comes from the teacher's boxes; pass "
                                     "forward(group, boxes=<teacher first-stage boxes [B, N, 4]>)")
                reference = boxes.detach()
            elif how is not None:
                src = self._need(group, "position" if how == "from_position" else "content")
                reference = self.derived["reference"](src).sigmoid()
            else:
                reference = group.reference  # None stays None: the student's decoder names what it lacks
            if reference is not None and reference.shape[-1] > self.reference_dim:
                reference = reference[..., :self.reference_dim]  # box -> its centre
        return QueryGroup(content=out["content"], position=out["position"], reference=reference)

    @staticmethod
    def _need(group: QueryGroup, f: str) -> Tensor:
        t = getattr(group, f)
        if t is None:
            raise ValueError(f"QueryProjection: the group has no {f!r} field to project")
        return t

    def extra_repr(self) -> str:
        return f"teacher_d={self.teacher_d}, student_d={self.student_d}, fields={self.fields}, " \
               f"keep_reference={self.keep_reference}, derive={self.derive}"


def build_query_projection(teacher_adapter, student_adapter, reference: str = "teacher_boxes") -> QueryProjection:
    """A QueryProjection from the teacher's query form to the student's (clear error when it cannot be built).

    reference: how a student reference the teacher's queries lack is derived (``distill.query_prior.reference``):
    ``teacher_boxes`` (the teacher's first-stage boxes) or ``learned`` (a trainable Linear)."""
    if reference not in ("teacher_boxes", "learned"):
        raise ValueError(f"reference must be 'teacher_boxes' or 'learned', got {reference!r}")
    t_form: dict[str, int] = dict(teacher_adapter.query_form)
    s_form: dict[str, int] = dict(student_adapter.query_form)
    t_fam, s_fam = teacher_adapter.family, student_adapter.family
    for f in _PROJECTABLE:
        if f in s_form and s_form[f] != student_adapter.d_model:
            raise IncompatibleQueriesError(f"student {f} width {s_form[f]} != d_model {student_adapter.d_model}")
        if f in t_form and t_form[f] != teacher_adapter.d_model:
            raise IncompatibleQueriesError(f"teacher {f} width {t_form[f]} != d_model {teacher_adapter.d_model}")
    derive: dict[str, str] = {}
    if "content" in s_form and "content" not in t_form:
        derive["content"] = "zeros"
    if "position" in s_form and "position" not in t_form:
        if "reference" not in t_form:
            raise IncompatibleQueriesError(
                f"teacher {t_fam} queries {t_form} have neither position queries nor reference boxes to derive the "
                f"position queries the student {s_fam} decoder needs {s_form}")
        derive["position"] = "from_reference"
    if "reference" in s_form:
        if "reference" in t_form:
            if t_form["reference"] < s_form["reference"]:
                raise IncompatibleQueriesError(
                    f"teacher {t_fam} reference points are {t_form['reference']}-d, the student {s_fam} needs "
                    f"{s_form['reference']}-d")
        elif reference == "teacher_boxes":
            derive["reference"] = "from_teacher_boxes"
        elif "position" in t_form or "content" in t_form:
            derive["reference"] = "from_position" if "position" in t_form else "from_content"
        else:  # pragma: no cover - every family has a width field or a reference
            raise IncompatibleQueriesError(f"teacher {t_fam} queries {t_form} give no reference for {s_fam} {s_form}")
    if derive:
        log.info("distill.query_prior: teacher %s queries %s -> student %s %s: derived %s",
                 t_fam, sorted(t_form), s_fam, sorted(s_form),
                 ", ".join(f"{f} {how.replace('_', ' ')}" for f, how in derive.items()))
    fields = tuple(f for f in _PROJECTABLE if f in s_form)
    return QueryProjection(teacher_adapter.d_model, student_adapter.d_model, fields=fields,
                           keep_reference="reference" in s_form, derive=derive,
                           reference_dim=s_form.get("reference", 4))
