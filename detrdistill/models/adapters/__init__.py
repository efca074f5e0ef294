"""The adapter modules, one per family (or two sharing a base), each declaring its ``FAMILY_SPECS``.

Every module of this package is discovered by the family registry (:mod:`detrdistill.models.families`), which also
looks a model's adapter up (:func:`~detrdistill.models.families.get_adapter`); the shared base class is
:class:`~detrdistill.models.adapters.base.DetectorAdapter`.
"""
