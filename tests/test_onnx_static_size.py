"""Static-size ONNX graphs (``FamilySpec.onnx_static_size``, RF-DETR): traced at the image processor's square pad
only, the export's position-embedding patch leaves the PyTorch model as it was, and ``predict`` / ``eval`` on the
``.onnx`` refuse another size in one line (eval pads a smaller batch to the size first). Parametrized over the
registry's static-size families. Skipped when onnx / onnxruntime are not installed."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (pip install 'detrdistill[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")

from detrdistill.cli import main  # noqa: E402
from detrdistill.export.onnx_export import (OnnxExportError, constant_position_embeddings,  # noqa: E402
                                            example_inputs, export_model_dir, export_onnx, processor_pad_size)
from detrdistill.export.onnx_metadata import read_metadata, with_metadata  # noqa: E402
from detrdistill.export.processor import build_image_processor  # noqa: E402
from detrdistill.models.families import all_specs, family_spec  # noqa: E402
from tests.conftest import tiny_overrides  # noqa: E402
from tests.registry_models import DATA, tiny_family_model  # noqa: E402
from tests.test_export import random_image  # noqa: E402

# slow: ONNX exports through the CLI
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
TOL = 1e-3
STATIC = [pytest.param(s.name, id=s.name) for s in all_specs() if s.onnx_static_size]


def exported_folder(family: str, tmp_path, model=None):
    """A saved tiny model of ``family`` with its processor (square pad 96 with ``DATA``), exported and checked."""
    model = model if model is not None else tiny_family_model(family)
    model.save_pretrained(str(tmp_path / "model"))
    build_image_processor(family, DATA.eval_size, DATA.max_size).save_pretrained(str(tmp_path / "model"))
    return model, export_model_dir(tmp_path / "model", tmp_path / "m.onnx")


def rewrite_metadata(path, **changes) -> None:
    """Replace metadata fields of the .onnx at ``path`` (a damaged or hand-edited file)."""
    info = read_metadata(path)
    for key, value in changes.items():
        setattr(info, key, value)
    path.write_bytes(with_metadata(path.read_bytes(), info))


def one_error_line(capsys) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@pytest.mark.parametrize("family", STATIC)
def test_traced_at_the_processors_square_pad_only(family, tmp_path, capsys):
    """export_model_dir / the CLI trace at the folder's square pad (no size given), check a batch of two there, and
    refuse another size in one line."""
    model, result = exported_folder(family, tmp_path)
    side = processor_pad_size(build_image_processor(family, DATA.eval_size, DATA.max_size))[0]
    assert result["input_size"] == (side, side) and max(result["max_abs_diff"].values()) < TOL
    assert read_metadata(result["path"]).input_size == (side, side)
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "cli.onnx")]) == 0
    assert f"(static size {side}x{side})" in capsys.readouterr().out
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "x.onnx"), "--height", "64"]) == 2
    assert f"its image processor's square pad {side}x{side}" in one_error_line(capsys)
    with pytest.raises(OnnxExportError, match="static input size") as err:
        export_onnx(model, tmp_path / "y.onnx", side, side + 32, processor=build_image_processor(
            family, DATA.eval_size, DATA.max_size))
    assert "\n" not in str(err.value)
    assert not list(tmp_path.glob("[xy].onnx*"))


@pytest.mark.parametrize("family", STATIC)
def test_the_export_leaves_the_pytorch_model_unchanged(family, tmp_path):
    """While exporting, the position embeddings are the recorded PyTorch values (so outputs at the traced size are
    unchanged, and another size is refused); after it, the model is unpatched and computes them again at every
    size."""
    model = tiny_family_model(family)
    side = processor_pad_size(build_image_processor(family, DATA.eval_size, DATA.max_size))[0]
    step = family_spec(family).sides(model.config).multiple
    traced, other = example_inputs(model, 2, side, side), example_inputs(model, 1, side + step, side, seed=1)
    with torch.no_grad():
        ref = [model(**traced), model(**other)]
        with constant_position_embeddings(model, example_inputs(model, 1, side, side, seed=2)):
            assert [m for m in model.modules() if "interpolate_pos_encoding" in vars(m)]  # something is patched
            during = model(**traced)
            with pytest.raises(OnnxExportError, match=f"fixed for {side}x{side}"):
                model(**other)
    assert torch.equal(during.logits, ref[0].logits) and torch.equal(during.pred_boxes, ref[0].pred_boxes)
    export_onnx(model, tmp_path / "m.onnx", processor=build_image_processor(family, DATA.eval_size, DATA.max_size))
    assert not [m for m in model.modules() if "interpolate_pos_encoding" in vars(m)]
    with torch.no_grad():
        after = [model(**traced), model(**other)]
    for a, r in zip(after, ref):
        assert torch.equal(a.logits, r.logits) and torch.equal(a.pred_boxes, r.pred_boxes)


@pytest.mark.parametrize("family", STATIC)
def test_the_runtime_refuses_another_size_in_one_line(family, tmp_path, capsys):
    """OnnxDetector refuses another size (not onnxruntime's message); the eval adapter pads a smaller batch to the
    static size (= PyTorch on the padded batch) and refuses a larger one; predict refuses a file whose processor
    pads to another size before reading an image."""
    from detrdistill.export.onnx_runtime import OnnxAdapter, OnnxDetector

    model, result = exported_folder(family, tmp_path)
    side = result["input_size"][0]
    detector = OnnxDetector(result["path"])
    with pytest.raises(OnnxExportError, match=f"takes only {side}x{side} inputs") as err:
        detector(torch.zeros(1, 3, side + 32, side))
    assert "\n" not in str(err.value)

    small = example_inputs(model, 2, side - 32, side - 32, seed=3)
    small["pixel_mask"] = small.get("pixel_mask", torch.ones(2, side - 32, side - 32, dtype=torch.long))
    small["pixel_mask"][1, :, side // 2:] = 0
    got = OnnxAdapter(detector)(small["pixel_values"], small["pixel_mask"])
    padded = example_inputs(model, 2, side, side)
    padded["pixel_values"] = torch.nn.functional.pad(small["pixel_values"], (0, 32, 0, 32))
    if "pixel_mask" in padded:
        padded["pixel_mask"] = torch.nn.functional.pad(small["pixel_mask"], (0, 32, 0, 32))
    with torch.no_grad():
        ref = model(**padded)
    assert (got.logits[-1] - ref.logits).abs().max() < TOL and (got.boxes[-1] - ref.pred_boxes).abs().max() < TOL
    with pytest.raises(OnnxExportError, match=f"takes only {side}x{side} inputs"):
        OnnxAdapter(detector)(torch.zeros(1, 3, side + 32, side + 32))

    random_image(90, 130, seed=1).save(tmp_path / "img.png")
    config = dict(read_metadata(result["path"]).preprocessor_config, pad_size={"height": side + 32,
                                                                               "width": side + 32})
    rewrite_metadata(result["path"], preprocessor_config=config)
    capsys.readouterr()
    assert main(["predict", str(result["path"]), str(tmp_path / "img.png"), "--out", str(tmp_path / "pred")]) == 2
    line = one_error_line(capsys)
    assert f"takes only {side}x{side} inputs" in line and f"pads to {side + 32}x{side + 32}" in line
    assert not (tmp_path / "pred" / "predictions.json").exists()


@pytest.mark.parametrize("family", STATIC)
def test_eval_of_a_static_size_file_pads_to_it_and_refuses_larger_images(family, synth_dir, tmp_path, capsys):
    """``detrdistill eval --model m.onnx``: the synthetic 64 x 64 images are padded to the static size and scored;
    a file whose resize makes them larger than the size stops with one line."""
    from detrdistill.models.build import build_model
    from tests.registry_models import tiny_family_cfg

    cats = sorted(json.loads((synth_dir / "train.json").read_text())["categories"], key=lambda c: c["id"])
    torch.manual_seed(0)
    model = build_model(tiny_family_cfg(family), {i: c["name"] for i, c in enumerate(cats)}).eval()
    _, result = exported_folder(family, tmp_path, model)
    side = result["input_size"][0]
    overrides = sum((["--set", o] for o in tiny_overrides(tmp_path / "run", synth_dir)), [])
    assert main(["eval", "--model", str(result["path"]), "--eval-dir", str(tmp_path / "ok"), *overrides]) == 0
    assert "AP50" in json.loads((tmp_path / "ok" / "eval.json").read_text())
    pre = read_metadata(result["path"]).preprocessing
    rewrite_metadata(result["path"], preprocessing=dict(pre, resize=dict(pre["resize"], shortest_edge=side + 32,
                                                                         longest_edge=side + 32)))
    capsys.readouterr()
    assert main(["eval", "--model", str(result["path"]), "--eval-dir", str(tmp_path / "big"), *overrides]) == 2
    assert f"takes only {side}x{side} inputs" in one_error_line(capsys)
    assert not (tmp_path / "big" / "eval.json").exists()
