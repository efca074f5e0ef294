"""The names of the families the adapter modules declare, readable without importing torch or transformers.

``model.family`` is checked when a config is loaded, which the CLI does before it imports torch (a typo in a config
is reported in well under a second). The registry (:mod:`.families`) imports every adapter module, and with them
transformers; this list is what the config check reads until the registry has been loaded. A test keeps it equal to
the registry's families (``tests/test_config_errors.py``), so a new adapter module adds its name here too.
"""
from __future__ import annotations

import sys

__all__ = ["DECLARED_FAMILIES", "known_families"]

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
