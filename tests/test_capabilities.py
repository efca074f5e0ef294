"""A family's declared capabilities (``FamilySpec.capabilities``) are what its model does, for every registered
family; and no module outside ``detrdistill/models/`` names a family: they read the registry instead."""
from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import torch

from detrdistill.errors import ConfigError
from detrdistill.export.processor import build_image_processor
from detrdistill.models import get_adapter
from detrdistill.models.build import build_model
from detrdistill.models.families import CAPABILITIES, all_specs, family_spec
from tests.registry_models import ID2LABEL, family_params, tiny_family_cfg, tiny_family_model
from tests.test_export import random_image

pytestmark = pytest.mark.usefixtures("one_thread")
PACKAGE = Path(__file__).resolve().parents[1] / "detrdistill"


@pytest.mark.parametrize("family", family_params())
def test_pixel_mask_capability_is_whether_the_mask_changes_the_outputs(family):
    """``pixel_mask``: the model reads the mask (an ONNX graph then takes it as an input); without it, padding
    marked in the mask changes nothing."""
    model = tiny_family_model(family)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(1, 3, 96, 96, generator=g)
    pixels[:, :, 64:] = 0  # a padded image: the bottom third is padding
    full, padded = torch.ones(1, 96, 96, dtype=torch.long), torch.ones(1, 96, 96, dtype=torch.long)
    padded[:, 64:] = 0
    with torch.no_grad():
        a = model(pixel_values=pixels, pixel_mask=full)
        b = model(pixel_values=pixels, pixel_mask=padded)
    changed = not (torch.allclose(a.logits, b.logits) and torch.allclose(a.pred_boxes, b.pred_boxes))
    assert changed == ("pixel_mask" in family_spec(family).capabilities)


@pytest.mark.parametrize("family", family_params())
def test_query_table_and_multi_scale_capabilities_match_the_adapter(family):
    spec = family_spec(family)
    adapter = get_adapter(tiny_family_model(family))
    assert adapter.has_query_table == ("query_table" in spec.capabilities)
    cfg = tiny_family_cfg(family).model_copy(update={"num_feature_levels": 3, "with_box_refine": False,
                                                     "two_stage": False})
    torch.manual_seed(0)
    try:
        levels = get_adapter(build_model(cfg, ID2LABEL)).num_feature_levels
    except ConfigError:  # a single-level family may refuse the setting outright (one line) instead of ignoring it
        assert "multi_scale" not in spec.capabilities
        return
    assert (levels > 1) == ("multi_scale" in spec.capabilities)


@pytest.mark.parametrize("family", family_params())
def test_square_padding_capability_is_the_processors_padding(family):
    spec = family_spec(family)
    out = build_image_processor(family, 64, 96)(images=random_image(90, 130), return_tensors="pt")
    side = -(-96 // spec.size_multiple) * spec.size_multiple
    assert (tuple(out["pixel_values"].shape[-2:]) == (side, side)) == ("square_padding" in spec.capabilities)


@pytest.mark.parametrize("family", family_params())
def test_a_switch_the_family_ignores_is_warned_about(family, caplog):
    spec = family_spec(family)
    for key, capability in (("with_box_refine", "box_refine"), ("two_stage", "two_stage")):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="detrdistill"):  # two-stage needs box refinement
            build_model(tiny_family_cfg(family).model_copy(update={key: True, "with_box_refine": True}), ID2LABEL)
        warned = any(f"model.{key} is ignored" in r.getMessage() for r in caplog.records)
        assert warned == (capability not in spec.capabilities)


def test_every_declared_capability_is_known_and_documented():
    doc = (PACKAGE.parent / "docs" / "adapters.md").read_text()
    for cap in CAPABILITIES:
        assert f"`{cap}`" in doc, f"docs/adapters.md does not document the capability {cap!r}"
    assert all(spec.capabilities <= CAPABILITIES for spec in all_specs())


def test_no_module_outside_models_names_a_family():
    """Family facts live in the registry: a quoted family name or model_type outside ``detrdistill/models/`` is
    a family-specific branch that a new family would silently miss (the config's default family excepted)."""
    names = {n for spec in all_specs() for n in (spec.name, *spec.model_types)}
    pattern = re.compile(r"[\"'](" + "|".join(map(re.escape, sorted(names))) + r")[\"']")
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE)
        if rel.parts[0] == "models":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line) and not (rel.as_posix() == "config.py" and "Field(" in line):
                hits.append(f"{rel}:{i}: {line.strip()}")
    assert not hits, hits
