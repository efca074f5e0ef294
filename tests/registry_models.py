"""Tiny models of every registered family, for the tests that must cover each family (export, ONNX, pipeline,
predict), taken from the contract tests' case table (``tests/test_adapters.CASES``): a family merged with its case
there is covered here too, with no list to edit."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DataConfig
from detrdistill.models.build import build_model
from detrdistill.models.families import all_specs, family_names, family_spec
from tests.test_adapters import CASES, _break_symmetry, model_cfg
from tests.test_export import ID2LABEL

__all__ = ["family_params", "family_case", "tiny_family_cfg", "tiny_family_model", "representative_families",
           "export_size", "DATA", "ID2LABEL"]

DATA = DataConfig(eval_size=64, max_size=96)  # small images: resized sides 64..96, square pad 96


def family_case(family: str) -> str:
    """The first case of ``family`` in the contract tests' table."""
    for name, (fam, _) in CASES.items():
        if fam == family:
            return name
    raise LookupError(f"family {family!r} has no case in tests/test_adapters.py CASES; add one (its tiny config)")


def family_params() -> list:
    return [pytest.param(f, id=f) for f in family_names()]


def tiny_family_cfg(family: str):
    return model_cfg(family_case(family))


def tiny_family_model(family: str, seed: int = 0):
    """A tiny random model of ``family`` in eval mode, its constant decoder / head parameters perturbed as the
    contract tests do (trained models have neither unit norms nor zero heads)."""
    torch.manual_seed(seed)
    model = build_model(tiny_family_cfg(family), ID2LABEL)
    _break_symmetry(model)
    return model.eval()


def export_size(family: str) -> tuple[int | None, int | None]:
    """The (height, width) the tests export ``family`` at: 64 x 96 (small, rectangular), or (None, None) for a
    family with ``onnx_static_size`` (its graph is traced at its processor's square pad, 96 x 96 with ``DATA``)."""
    return (None, None) if family_spec(family).onnx_static_size else (64, 96)


def representative_families() -> list:
    """One family per distinct (activation, padding rule, pixel-mask input, static ONNX size) in the registry: the
    variants a consumer of the exported files must handle."""
    seen, out = set(), []
    for spec in all_specs():
        key = (spec.class_activation, "square_padding" in spec.capabilities, "pixel_mask" in spec.capabilities,
               spec.onnx_static_size is not None)
        if key not in seen:
            seen.add(key)
            out.append(pytest.param(spec.name, id=spec.name))
    return out


def register_auto_classes(family: str) -> None:
    """What a user of ``family`` calls before transformers' Auto classes / pipeline (nothing for most)."""
    fn = family_spec(family).auto_classes
    if fn is not None:
        fn()
