"""The names of the families the adapter modules declare, and the family check, without importing torch or
transformers.

``model.family`` is checked by :func:`check_family`: by the CLI right after it loads a config, before it imports
torch (a typo in a config is reported in well under a second), and by the registry
(:func:`~detrdistill.models.families.family_spec`) whenever a model is built. The registry (:mod:`.families`)
imports every adapter module, and with them transformers; :data:`DECLARED_FAMILIES` is what the check reads until
the registry has been loaded. A test keeps it equal to the registry's families (``tests/test_config_errors.py``),
so a new adapter module adds its name here too.
"""
from __future__ import annotations

import difflib
import sys

from ..errors import UnsupportedFamilyError

__all__ = ["DECLARED_FAMILIES", "known_families", "check_family", "unknown_family_error"]

DECLARED_FAMILIES: tuple[str, ...] = (
    "adamixer", "conditional_detr", "d_fine", "dab_detr", "deformable_detr", "deimv2", "detr", "lw_detr", "rf_detr",
    "rt_detr", "rt_detr_v2",
)


def known_families() -> tuple[str, ...]:
    """The registry's families once it is loaded (it may hold families registered at run time), else
    :data:`DECLARED_FAMILIES`."""
    families = sys.modules.get(f"{__package__}.families")
    if families is not None and getattr(families, "_discovered", False):
        return families.family_names()
    return DECLARED_FAMILIES


def unknown_family_error(name: str, names: tuple[str, ...]) -> UnsupportedFamilyError:
    """The one-line error for a family ``name`` that is not one of ``names`` (with the nearest one, if any)."""
    near = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]!r}? " if near else ""
    return UnsupportedFamilyError(f"unknown model family {name!r}; {hint}supported: {', '.join(names)}")


def check_family(name: str) -> str:
    """``name`` when it is a known family (:func:`known_families`), else :class:`UnsupportedFamilyError`."""
    names = known_families()
    if name not in names:
        raise unknown_family_error(name, names)
    return name
