"""Distil from a teacher whose classes are a superset of the student's, matched by class name.

:func:`build_class_map` compares the teacher's and the student's label maps (the student's is the dataset's):

* equal maps: no map (None), the teacher's logits are used as they are;
* every student class is a teacher class (by name, any id): a :class:`ClassMap` that the
  :class:`~detrdistill.distillation.distiller.Distiller` applies once to the teacher's logits where they are produced
  (``teacher_forward``), so every term (logits, feature mask quality scores, the teacher's own GT assignment of the
  query prior, FitNet / logit KD baselines) sees teacher scores restricted and reordered to the student's classes;
* no class in common, or some student classes missing from the teacher: refused before training, one line.
  A partial overlap is refused rather than warned about: the logits terms compare every class column, and a
  teacher has no score to give for a class it never learnt (any filler would teach the student to suppress it).

Sigmoid (focal) teachers: the columns are selected (each class's score is independent of the others).
Softmax teachers (DETR, last column = no-object): the dropped classes' probability mass goes to no-object
(``logsumexp`` of their logits and the no-object logit), so the kept classes' probabilities are exactly the
teacher's and the no-object column stays last.
"""
from __future__ import annotations

import logging

import torch
from torch import Tensor, nn

from ..errors import IncompatibleModelsError

__all__ = ["ClassMap", "build_class_map"]

log = logging.getLogger("detrdistill")


class ClassMap(nn.Module):
    """teacher logits [..., C_T (+1)] -> [..., C_S (+1)]; ``index[j]`` is the teacher class (logit column) of student
    class j. The teacher's classes are its logits' columns (the last one no-object for a softmax teacher), not the
    entries of its ``id2label``: a COCO checkpoint whose label map skips ids (80 names, ids up to 90, 91 columns)
    keeps every column it does not map in no-object's mass."""

    def __init__(self, index: list[int], softmax: bool):
        super().__init__()
        self.softmax = softmax
        self.top = max(index)  # the highest teacher column read
        self.register_buffer("index", torch.tensor(index, dtype=torch.long), persistent=False)
        self._merged: dict[tuple[int, torch.device], Tensor] = {}  # by logits width and device

    def merged(self, width: int, device: torch.device) -> Tensor:
        """Columns whose probability goes to no-object: the unmapped classes and no-object itself (softmax)."""
        key = (width, device)
        if key not in self._merged:
            classes = width - 1  # the last column is no-object
            dropped = sorted(set(range(classes)) - set(self.index.tolist())) + [classes]
            self._merged[key] = torch.tensor(dropped, dtype=torch.long, device=device)
        return self._merged[key]

    def forward(self, logits: Tensor) -> Tensor:
        classes = logits.shape[-1] - int(self.softmax)
        if self.top >= classes:
            raise IncompatibleModelsError(
                f"the teacher's label map names class id {self.top} but its classification head has {classes} classes "
                f"(logits of width {logits.shape[-1]}{', the last no-object' if self.softmax else ''}); its config's "
                "id2label does not describe its head: fix id2label / num_labels in the teacher's config.json")
        kept = logits.index_select(-1, self.index)
        if not self.softmax:
            return kept
        no_object = logits.index_select(-1, self.merged(logits.shape[-1], logits.device)).logsumexp(-1, keepdim=True)
        return torch.cat([kept, no_object], dim=-1)


def _names(id2label) -> dict[int, str]:
    return {int(k): str(v) for k, v in dict(id2label or {}).items()}


def build_class_map(teacher_id2label: dict, student_id2label: dict, teacher_activation: str) -> ClassMap | None:
    """None when the label maps are equal; a :class:`ClassMap` when the teacher knows every student class by name;
    else :class:`IncompatibleModelsError` (one line naming the missing classes)."""
    t_map, s_map = _names(teacher_id2label), _names(student_id2label)
    if t_map == s_map:
        log.info("distill.teacher classes: the dataset's %d, same ids %s", len(s_map), _shown(list(s_map.values())))
        return None
    by_name: dict[str, int] = {}
    for i, name in sorted(t_map.items()):
        by_name.setdefault(name, i)
    missing = [name for name in s_map.values() if name not in by_name]
    if len(missing) == len(s_map):
        raise IncompatibleModelsError(
            f"the teacher has no class in common with the dataset (teacher: {_shown(list(t_map.values()))}; dataset: "
            f"{_shown(list(s_map.values()))}); use a teacher trained on these classes or fine-tune one first")
    if missing:
        raise IncompatibleModelsError(
            f"the teacher lacks {len(missing)} of the dataset's {len(s_map)} classes ({_shown(missing)}); a teacher "
            "must know every dataset class by name (fine-tune it on this dataset first, or drop those classes)")
    index = [by_name[s_map[j]] for j in range(len(s_map))]
    softmax = teacher_activation == "softmax"
    dropped = [t_map[i] for i in sorted(set(t_map) - set(index))]
    pairs = [f"{s_map[j]!r} {index[j]}->{j}" for j in range(len(s_map))]
    log.info("distill.teacher classes -> dataset classes by name: kept %d [%s%s], dropped %d teacher classes%s%s",
             len(pairs), ", ".join(pairs[:8]), ", ..." if len(pairs) > 8 else "", len(dropped),
             f" ({_shown(dropped)})" if dropped else "",
             "; a softmax teacher's dropped classes count as no-object" if softmax and dropped else "")
    return ClassMap(index, softmax=softmax)


def _shown(names: list[str], limit: int = 6) -> str:
    return ", ".join(repr(n) for n in names[:limit]) + (", ..." if len(names) > limit else "")
