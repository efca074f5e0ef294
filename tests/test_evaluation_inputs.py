"""What every reported AP rests on: the evaluation runs the model in float32 even when training is mixed precision,
the validation split must name the classes the model is trained on, and COCO ids must be integers."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from detrdistill.data import build_dataset, collate_fn
from detrdistill.data.validate import DatasetError
from detrdistill.engine.evaluator import evaluate
from detrdistill.engine.loading import eval_loader
from detrdistill.engine.setup import check_same_classes
from detrdistill.config import DataConfig, SplitConfig
from detrdistill.models.families import get_adapter
from tests.registry_models import tiny_family_model


def _split(synth_dir, name="val.json"):
    return SplitConfig(ann_file=str(synth_dir / name), image_dir=str(synth_dir / "images"))


DATA = DataConfig(eval_size=64, max_size=64, min_size=[64], num_workers=0)


def test_the_evaluation_forward_is_float32_under_a_mixed_precision_accelerator(synth_dir):
    ds = build_dataset(_split(synth_dir), DATA, train=False)
    adapter = get_adapter(tiny_family_model("deformable_detr"))
    seen = []
    forward = adapter.forward

    def recording(*args, **kwargs):
        seen.append(torch.is_autocast_enabled("cpu"))
        return forward(*args, **kwargs)

    adapter.forward = recording
    bf16 = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True,
                           autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    stats = evaluate(adapter, eval_loader(ds, collate_fn, 4, 0, 1, 0), ds, bf16, progress=False)
    assert seen and not any(seen) and "AP" in stats


def _with_categories(synth_dir, tmp_path, categories):
    data = json.loads((synth_dir / "val.json").read_text())
    data["categories"] = categories
    out = tmp_path / "val.json"
    out.write_text(json.dumps(data))
    return build_dataset(SplitConfig(ann_file=str(out), image_dir=str(synth_dir / "images")), DATA, train=False)


def test_a_validation_split_naming_other_classes_is_refused_by_file(synth_dir, tmp_path):
    train = build_dataset(_split(synth_dir, "train.json"), DATA, train=True)
    cats = json.loads((synth_dir / "val.json").read_text())["categories"]
    check_same_classes(train, _with_categories(synth_dir, tmp_path, cats), "train.json", "val.json")  # same: fine
    renamed = [dict(c, name=c["name"] + "_x") if i == 0 else c for i, c in enumerate(cats)]
    with pytest.raises(DatasetError, match=r"^val.json: its categories differ .*only in train.json: \['"):
        check_same_classes(train, _with_categories(synth_dir, tmp_path, renamed), "train.json", "val.json")
    swapped = [dict(c, name=cats[1]["name"]) if i == 0 else dict(c, name=cats[0]["name"]) if i == 1 else c
               for i, c in enumerate(cats)]  # the same names on other ids: every class would score as another
    with pytest.raises(DatasetError, match="the same names in another order: label 0 is"):
        check_same_classes(train, _with_categories(synth_dir, tmp_path, swapped), "train.json", "val.json")


def test_a_string_image_id_is_refused_when_the_file_is_read(synth_dir, tmp_path):
    data = json.loads((synth_dir / "val.json").read_text())
    first = data["images"][0]["id"]
    data["images"][0]["id"] = f"img{first}"
    for a in data["annotations"]:
        if a["image_id"] == first:
            a["image_id"] = f"img{first}"
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=r"field 'id' must be an integer, got 'img"):
        build_dataset(SplitConfig(ann_file=str(bad), image_dir=str(synth_dir / "images")), DATA, train=False)
