"""Which teacher decoder stage supervises each student decoder stage.

The official code pairs student stage l with teacher stage l (both models have 6 decoder layers).  For decoders of
different depth the paper (Fig. 5) gives no usable rule, so three mappings are offered.  Stages are 0-based; stage
``L - 1`` is the final (inference) stage.

* ``"uniform"`` (default): student stage i -> teacher stage ``ceil((i + 1) * T / S) - 1``, i.e. the teacher stage at
  the same *relative depth*.  The last student stage always maps to the last teacher stage, equal depths give the
  identity (the official pairing), and the other stages are spread evenly::

      map_stages(6, 6) == [0, 1, 2, 3, 4, 5]
      map_stages(3, 6) == [1, 3, 5]
      map_stages(2, 6) == [2, 5]
      map_stages(4, 6) == [1, 2, 4, 5]
      map_stages(6, 3) == [0, 0, 1, 1, 2, 2]      # deeper student: each teacher stage teaches two
      map_stages(1, 6) == [5]

* ``"last"``: align the ends ("last-k"): student stage i -> teacher stage ``i + (T - S)``, clamped at 0 for a deeper
  student::

      map_stages(3, 6, "last") == [3, 4, 5]
      map_stages(6, 3, "last") == [0, 0, 0, 0, 1, 2]

* ``"final"``: every student stage learns from the teacher's final stage (the official code with
  ``is_layer_by_layer_distill=False``)::

      map_stages(3, 6, "final") == [5, 5, 5]
"""
from __future__ import annotations

from ..errors import ConfigError

MODES = ("uniform", "last", "final")


def map_stages(num_student: int, num_teacher: int, mode: str = "uniform") -> list[int]:
    """Teacher stage index (0-based) for each of the ``num_student`` student stages; see the module docstring."""
    if num_student < 1 or num_teacher < 1:
        raise ValueError(f"stage counts must be >= 1, got student={num_student}, teacher={num_teacher}")
    S, T = int(num_student), int(num_teacher)
    if mode == "uniform":
        return [((i + 1) * T + S - 1) // S - 1 for i in range(S)]
    if mode == "last":
        return [max(0, i + T - S) for i in range(S)]
    if mode == "final":
        return [T - 1] * S
    raise ConfigError(f"unknown stage mapping {mode!r}; expected one of {MODES}")
