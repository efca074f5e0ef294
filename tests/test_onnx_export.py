"""ONNX export: onnxruntime reproduces PyTorch (logits, boxes within 1e-3) at the traced size and at
another size and batch (dynamic axes). Skipped when onnx / onnxruntime are not installed."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnx", reason="onnx not installed (pip install 'detrdistill[onnx]')")
pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install 'detrdistill[onnx]')")

from detrdistill.export.onnx_export import (OnnxExportError, example_inputs, export_model_dir,  # noqa: E402
                                            export_onnx, float32_reference_points, max_abs_difference,
                                            onnx_session, traced_spatial_shapes)
from detrdistill.models.build import build_model  # noqa: E402
from tests.test_export import ID2LABEL, tiny_model_cfg  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
TOL = 1e-3


def tiny(family: str, **update):
    torch.manual_seed(0)
    return build_model(tiny_model_cfg(family).model_copy(update=update), ID2LABEL).eval()


@pytest.mark.parametrize("family,update", [
    ("deformable_detr", {"with_box_refine": True, "two_stage": True}),
    ("rt_detr", {}),
    ("detr", {}),
])
def test_onnxruntime_matches_pytorch_at_two_sizes(family, update, tmp_path):
    model = tiny(family, **update)
    session = onnx_session(export_onnx(model, tmp_path / "m.onnx", 64, 96))
    same = max_abs_difference(model, session, example_inputs(model, 1, 64, 96))
    other_inputs = example_inputs(model, 2, 128, 64, seed=1)
    if "pixel_mask" in other_inputs:
        other_inputs["pixel_mask"][1, 100:, :] = 0  # a padded image in the batch
    other = max_abs_difference(model, session, other_inputs)
    assert max(same.values()) < TOL and max(other.values()) < TOL, (same, other)


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
