"""Map a teacher's query group to the student's width (DETRDistill's query-prior distillation input).

``QueryProjection(teacher_d, student_d, fields)`` holds one ``nn.Linear(teacher_d, student_d)`` per projected field
(``content`` / ``position``) when the widths differ, and is the identity otherwise. Reference points / anchors are
width-free and are passed through (unless ``keep_reference=False``); fields not listed are dropped (None).

``build_query_projection(teacher_adapter, student_adapter)`` checks the teacher's queries provide every field the
student's decoder needs (``DetectorAdapter.query_form``) and builds the matching projection.
"""
from __future__ import annotations

from typing import Sequence

from torch import nn

from ..errors import IncompatibleQueriesError
from .outputs import QueryGroup

__all__ = ["QueryProjection", "build_query_projection", "IncompatibleQueriesError"]

_PROJECTABLE = ("content", "position")


class QueryProjection(nn.Module):
    def __init__(self, teacher_d: int, student_d: int, fields: Sequence[str] = ("content", "position"),
                 keep_reference: bool = True):
        super().__init__()
        bad = [f for f in fields if f not in _PROJECTABLE]
        if bad:
            raise ValueError(f"QueryProjection fields must be among {_PROJECTABLE}, got {bad}")
        self.teacher_d, self.student_d = int(teacher_d), int(student_d)
        self.fields = tuple(fields)
        self.keep_reference = keep_reference
        self.proj = nn.ModuleDict({
            f: (nn.Linear(self.teacher_d, self.student_d) if self.teacher_d != self.student_d else nn.Identity())
            for f in self.fields
        })

    def forward(self, group: QueryGroup) -> QueryGroup:
        out = {}
        for f in _PROJECTABLE:
            t = getattr(group, f)
            if f not in self.fields:
                out[f] = None
                continue
            if t is None:
                raise ValueError(f"QueryProjection: the group has no {f!r} field to project")
            if t.shape[-1] != self.teacher_d:
                raise ValueError(f"QueryProjection: group.{f} has width {t.shape[-1]}, expected {self.teacher_d}")
            out[f] = self.proj[f](t)
        return QueryGroup(content=out["content"], position=out["position"],
                          reference=group.reference if self.keep_reference else None)

    def extra_repr(self) -> str:
        return f"teacher_d={self.teacher_d}, student_d={self.student_d}, fields={self.fields}, " \
               f"keep_reference={self.keep_reference}"


def build_query_projection(teacher_adapter, student_adapter) -> QueryProjection:
    """A QueryProjection from the teacher's query form to the student's (clear error when incompatible)."""
    t_form: dict[str, int] = dict(teacher_adapter.query_form)
    s_form: dict[str, int] = dict(student_adapter.query_form)
    missing = [f for f in s_form if f not in t_form]
    if missing:
        raise IncompatibleQueriesError(
            f"teacher {teacher_adapter.family} queries {t_form} lack field(s) {missing} that the student "
            f"{student_adapter.family} decoder needs {s_form}")
    if "reference" in s_form and t_form["reference"] != s_form["reference"]:
        raise IncompatibleQueriesError(
            f"teacher {teacher_adapter.family} reference points are {t_form['reference']}-d, the student "
            f"{student_adapter.family} needs {s_form['reference']}-d")
    for f in _PROJECTABLE:
        if f in s_form and s_form[f] != student_adapter.d_model:
            raise IncompatibleQueriesError(f"student {f} width {s_form[f]} != d_model {student_adapter.d_model}")
        if f in s_form and t_form[f] != teacher_adapter.d_model:
            raise IncompatibleQueriesError(f"teacher {f} width {t_form[f]} != d_model {teacher_adapter.d_model}")
    fields = tuple(f for f in _PROJECTABLE if f in s_form)
    return QueryProjection(teacher_adapter.d_model, student_adapter.d_model, fields=fields,
                           keep_reference="reference" in s_form)
