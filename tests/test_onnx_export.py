"""ONNX export: every registered family exports, and onnxruntime reproduces PyTorch (logits, boxes within 1e-3)
at the traced size and at another size and batch (dynamic axes; a static-size family, ``FamilySpec.onnx_static_size``:
another batch at its processor's square pad, the only size its graph takes); the file's metadata carries the
family's classes, pre- and post-processing (and the static size); a model that cannot be exported fails in one line.
Skipped when onnx / onnxruntime are not installed."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (pip install 'detrdistill[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")

from detrdistill.data.transforms import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from detrdistill.export.onnx_export import (OnnxExportError,  # noqa: E402
                                            example_inputs, export_model_dir, export_onnx,
                                            float32_reference_points, max_abs_difference, onnx_session,
                                            traced_spatial_shapes)
from detrdistill.export.onnx_metadata import read_metadata  # noqa: E402
from detrdistill.export.processor import build_image_processor  # noqa: E402
from detrdistill.models.build import build_model  # noqa: E402
from detrdistill.models.families import family_spec  # noqa: E402
from tests.registry_models import DATA, export_size, family_params, tiny_family_model  # noqa: E402
from tests.test_export import ID2LABEL, tiny_model_cfg  # noqa: E402

# slow: ONNX exports
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
TOL = 1e-3


def tiny(family: str, **update):
    torch.manual_seed(0)
    return build_model(tiny_model_cfg(family).model_copy(update=update), ID2LABEL).eval()


def assert_parity_at_two_sizes(model, path, static_size: tuple[int, int] | None = None):
    """Parity at 64 x 96 and at 128 x 64 with batch 2; a static-size graph: at ``static_size``, batch 1 and 2."""
    session = onnx_session(path)
    height, width = static_size or (64, 96)
    same = max_abs_difference(model, session, example_inputs(model, 1, height, width))
    other_inputs = example_inputs(model, 2, *(static_size or (128, 64)), seed=1)
    if "pixel_mask" in other_inputs:
        other_inputs["pixel_mask"][1, other_inputs["pixel_mask"].shape[1] * 3 // 4:, :] = 0  # a padded image
    other = max_abs_difference(model, session, other_inputs)
    assert max(same.values()) < TOL and max(other.values()) < TOL, (same, other)
    return session


@pytest.mark.parametrize("family", family_params())
def test_every_family_exports_with_parity_and_metadata(family, tmp_path):
    """Each registered family: exported (or refused in one line when its spec says why), parity at two sizes,
    and metadata that says what its registry entry says."""
    spec = family_spec(family)
    model = tiny_family_model(family)
    processor = build_image_processor(family, DATA.eval_size, DATA.max_size)
    if spec.onnx_unsupported:
        with pytest.raises(OnnxExportError, match="cannot be exported") as err:
            export_onnx(model, tmp_path / "m.onnx", *export_size(family), processor=processor)
        assert "\n" not in str(err.value) and not (tmp_path / "m.onnx").exists()
        return
    pad = processor.to_dict().get("pad_size")
    static = (pad["height"], pad["width"]) if spec.onnx_static_size else None
    path = export_onnx(model, tmp_path / "m.onnx", *export_size(family), processor=processor)
    assert not any(m.training for m in model.modules())  # the export leaves the model in eval mode
    session = assert_parity_at_two_sizes(model, path, static)
    info = read_metadata(session)
    assert info.input_size == static
    dims = session.get_inputs()[0].shape[2:]  # static: the square pad's ints; dynamic: named axes
    assert (tuple(dims) == static) if static else all(isinstance(d, str) for d in dims)
    assert info.family == family and info.id2label == ID2LABEL and info.category_ids is None
    assert info.inputs == [i.name for i in session.get_inputs()]
    assert ("pixel_mask" in info.inputs) == ("pixel_mask" in spec.capabilities)
    assert info.postprocess == {"activation": spec.class_activation, "top_k": 100, "boxes": "cxcywh"}
    pre = info.preprocessing
    assert pre["resize"] == {"shortest_edge": DATA.eval_size, "longest_edge": DATA.max_size, "resample": "bilinear"}
    assert pre["image_mean"] == list(IMAGENET_MEAN) and pre["image_std"] == list(IMAGENET_STD)
    assert abs(pre["rescale_factor"] - 1 / 255) < 1e-12
    assert (pre["padding"]["to"] == "fixed") == ("square_padding" in spec.capabilities)
    assert info.preprocessor_config == json.loads(json.dumps(processor.to_dict()))


def test_deformable_two_stage_with_box_refine_exports(tmp_path):
    model = tiny("deformable_detr", with_box_refine=True, two_stage=True)
    assert_parity_at_two_sizes(model, export_onnx(model, tmp_path / "m.onnx", 64, 96))


def test_export_patches_leave_pytorch_outputs_unchanged():
    model = tiny("deformable_detr", with_box_refine=True)
    inputs = example_inputs(model, 2, 64, 96)
    with torch.no_grad():
        ref = model(**inputs)
        with float32_reference_points(model), traced_spatial_shapes(model):
            patched = model(**inputs)
    torch.testing.assert_close(patched.logits, ref.logits, atol=0, rtol=0)
    torch.testing.assert_close(patched.pred_boxes, ref.pred_boxes, atol=0, rtol=0)
    assert not any("get_reference_points" in vars(m) for m in model.modules())  # patch removed


def test_export_model_dir_checks_and_errors(tmp_path):
    model = tiny("deformable_detr")
    model.save_pretrained(str(tmp_path / "model"))
    result = export_model_dir(tmp_path / "model", tmp_path / "out" / "m.onnx", 64, 64)
    assert result["path"].is_file() and max(result["max_abs_diff"].values()) < TOL
    assert not list((tmp_path / "out").glob("*.tmp"))
    with pytest.raises(OnnxExportError, match="no config.json"):
        export_model_dir(tmp_path / "missing", tmp_path / "x.onnx")
    with pytest.raises(OnnxExportError, match="multiples of 32"):
        export_onnx(model, tmp_path / "y.onnx", 70, 64)


def _static_maskless_export(model, path, ctx):
    """The export of notes section 8: fixed 64x64 input, no pixel_mask input, no dynamic axes."""
    import warnings

    from detrdistill.export.onnx_export import DetectorForExport
    with ctx, torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(DetectorForExport(model, False), (torch.randn(1, 3, 64, 64),), str(path), dynamo=False,
                          opset_version=17, input_names=["pixel_values"], output_names=["logits", "pred_boxes"])
    return path


def test_float64_grid_is_why_gridsample_had_no_kernel_and_the_cast_fixes_it(tmp_path):
    """The cause of the GridSample failure: a float64 sampling grid (see onnx_export's docstring)."""
    import contextlib

    import onnx

    model = tiny("deformable_detr")
    raw = _static_maskless_export(model, tmp_path / "raw.onnx", contextlib.nullcontext())
    graph = onnx.shape_inference.infer_shapes(onnx.load(str(raw))).graph
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    assert onnx.TensorProto.DOUBLE in [types.get(n.input[1]) for n in graph.node if n.op_type == "GridSample"]
    with pytest.raises(Exception, match="GridSample"):
        onnx_session(raw)
    fixed = _static_maskless_export(model, tmp_path / "fixed.onnx", float32_reference_points(model))
    pixels = {"pixel_values": torch.randn(1, 3, 64, 64)}
    assert max(max_abs_difference(model, onnx_session(fixed), pixels).values()) < TOL


def test_a_family_declared_unexportable_is_one_line(monkeypatch, tmp_path, capsys):
    """``FamilySpec.onnx_unsupported``: export refuses the family with its reason, before tracing."""
    import dataclasses

    from detrdistill.cli import main
    from detrdistill.export import onnx_export

    model = tiny("detr")
    model.save_pretrained(str(tmp_path / "model"))
    real = onnx_export.spec_of
    monkeypatch.setattr(onnx_export, "spec_of",
                        lambda m: dataclasses.replace(real(m), onnx_unsupported="its decoder loops in Python"))
    with pytest.raises(OnnxExportError, match="the detr family cannot be exported to ONNX: its decoder loops"):
        export_onnx(model, tmp_path / "m.onnx", 64, 64)
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "its decoder loops in Python" in err[0]
    assert not list(tmp_path.glob("m.onnx*"))


def test_a_failing_trace_is_one_line_naming_the_family(monkeypatch, tmp_path, capsys):
    """The exporter's own errors (AdaMixer's was 1,400 lines) become one line with the first line of the cause."""
    from detrdistill.cli import main

    def exporter_fails(*args, **kwargs):
        raise RuntimeError("Failed to export a node because it is not constant.\n" + "  %1 : graph line\n" * 1400)
    model = tiny("detr")
    model.save_pretrained(str(tmp_path / "model"))
    monkeypatch.setattr(torch.onnx, "export", exporter_fails)
    with pytest.raises(OnnxExportError) as err:
        export_onnx(model, tmp_path / "m.onnx", 64, 64)
    assert str(err.value) == ("the detr model cannot be exported to ONNX (RuntimeError: Failed to export a node "
                              "because it is not constant.)")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "model"), "--out", str(tmp_path / "m.onnx")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and "not constant" in err_lines[0]
    assert not list(tmp_path.glob("m.onnx*"))  # no half-written file


def test_an_onnx_file_that_onnxruntime_cannot_load_is_one_line(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(OnnxExportError, match="onnxruntime cannot load it") as err:
        onnx_session(bad)
    assert "\n" not in str(err.value)
    with pytest.raises(OnnxExportError, match="no such ONNX file"):
        onnx_session(tmp_path / "missing.onnx")


def test_export_model_dir_writes_category_ids_and_processor_metadata(tmp_path):
    """A finished model folder (processor + dataset category ids) -> the .onnx carries both."""
    from detrdistill.config import Config
    from detrdistill.export import finish_model_dir

    model = tiny("deformable_detr")
    model.save_pretrained(str(tmp_path / "model"))
    finish_model_dir(tmp_path / "model", Config(data=DATA, model=tiny_model_cfg("deformable_detr")), model.config,
                     category_ids=[7, 3, 12])
    result = export_model_dir(tmp_path / "model", tmp_path / "m.onnx", 64, 64, check=False)
    info = read_metadata(result["path"])
    assert info.category_ids == {0: 7, 1: 3, 2: 12}
    assert info.preprocessing["resize"]["shortest_edge"] == DATA.eval_size


@pytest.mark.parametrize("family", ["rt_detr", "d_fine", "deformable_detr"])
def test_the_onnx_eval_adapter_reports_boxes_in_each_images_frame_as_the_pytorch_adapter(family, tmp_path):
    """On a batch with a padded image, evaluation of the ONNX file reads the boxes the PyTorch adapter reports:
    fractions of each image's real pixels, also for a graph that ignores padding (RT-DETR, D-FINE: it predicts
    fractions of its padded input)."""
    from detrdistill.export.onnx_runtime import OnnxAdapter, OnnxDetector
    from detrdistill.models import get_adapter

    model = tiny_family_model(family)
    path = export_onnx(model, tmp_path / "m.onnx", *export_size(family),
                       processor=build_image_processor(family, DATA.eval_size, DATA.max_size))
    pixels = example_inputs(model, 2, 128, 96, seed=2)["pixel_values"]
    mask = torch.ones(2, 128, 96, dtype=torch.long)
    mask[1, 64:, :] = 0
    mask[1, :, 64:] = 0
    pixels = pixels * mask[:, None]
    got = OnnxAdapter(OnnxDetector(path))(pixels, mask)
    with torch.no_grad():
        ref = get_adapter(model)(pixels, mask)
    assert (got.boxes[-1] - ref.boxes[-1]).abs().max() < TOL
    assert (got.logits[-1] - ref.logits[-1]).abs().max() < TOL
