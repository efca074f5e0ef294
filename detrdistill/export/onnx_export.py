"""ONNX export of a saved detector (``detrdistill export MODEL --format onnx --out FILE``).

The graph takes ``pixel_values`` FloatTensor[B, 3, H, W] (normalised as the saved image processor does)
and, for the mask-aware families (DETR, Conditional, DAB, Deformable), ``pixel_mask`` LongTensor[B, H, W];
it returns ``logits`` [B, Q, C'] and ``pred_boxes`` [B, Q, 4] (normalised cxcywh), the transformers
model's final outputs. Exported with the TorchScript exporter (``dynamo=False``).

Why Deformable DETR failed in onnxruntime (notes section 8, ``Could not find an implementation for
GridSample(16)``), measured: that export had a static input size and no ``pixel_mask`` input (transformers
then builds an all-ones mask inside the graph). The exporter folds the encoder's reference points
(``linspace`` and ``valid_ratios * height`` over the now-constant sizes) in float64 (Cast-to-DOUBLE nodes
in the encoder), so the first encoder layer's sampling grid is float64 while its value map is float32.
onnxruntime's CPU GridSample kernel needs input and grid of one element type, so no kernel matches.
It is neither the rank (4-D) nor the mode (bilinear, zeros padding). With dynamic height/width, or a
``pixel_mask`` input, the grid stays float32; :func:`float32_reference_points` additionally casts the
reference points to the valid ratios' dtype during export (a no-op in PyTorch), which fixes the static,
mask-less case too (tested).

A second trace problem: transformers builds ``spatial_shapes`` with ``torch.as_tensor(list of sizes)``,
a constant in the trace, so offsets were normalised by the export size at every other size (logits off
by ~0.03 on a tiny model); :func:`traced_spatial_shapes` rebuilds it from the traced sizes.

Dynamic axes: batch, height and width for every family (parity at a second size and batch is tested).
Sides must be multiples of 32 (RT-DETR's FPN needs it; the image processors pad accordingly).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import nn

from detrdistill.errors import DetrDistillError



class OnnxExportError(DetrDistillError):
    """The model cannot be exported, or onnx/onnxruntime is missing."""


class DetectorForExport(nn.Module):
    """``(pixel_values[, pixel_mask]) -> (logits, pred_boxes)`` around a transformers detector."""

    def __init__(self, model: nn.Module, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask if self.with_mask else None)
        return out.logits, out.pred_boxes


@contextlib.contextmanager
def float32_reference_points(model: nn.Module):
    """While active, Deformable DETR encoders return reference points in the valid ratios' dtype."""
    patched = []
    for m in model.modules():
        orig = getattr(type(m), "get_reference_points", None)
        if orig is None or not type(m).__name__.endswith("Encoder"):
            continue

        def cast(spatial_shapes_list, valid_ratios, device, _orig=orig):
            return _orig(spatial_shapes_list, valid_ratios, device).to(valid_ratios.dtype)
        m.get_reference_points = cast  # instance attribute shadows the staticmethod
        patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            del m.get_reference_points


@contextlib.contextmanager
def traced_spatial_shapes(model: nn.Module):
    """While active, deformable attention layers get ``spatial_shapes`` rebuilt from the per-level sizes.

    transformers builds ``spatial_shapes`` with ``torch.as_tensor(spatial_shapes_list)``, which the tracer
    records as a constant, so an exported graph would normalise sampling offsets by the export size at
    every input size. Under tracing the entries of ``spatial_shapes_list`` are traced 0-d tensors; stacking
    them keeps the graph size-generic. Outside tracing the rebuilt tensor equals the original.
    """
    def rebuild(module, args, kwargs):
        sizes = kwargs.get("spatial_shapes_list")
        if sizes is None or kwargs.get("spatial_shapes") is None:
            return None
        ref = kwargs["spatial_shapes"]
        rows = [torch.stack([torch.as_tensor(h), torch.as_tensor(w)]) for h, w in sizes]
        return args, {**kwargs, "spatial_shapes": torch.stack(rows).to(device=ref.device, dtype=ref.dtype)}
    handles = [m.register_forward_pre_hook(rebuild, with_kwargs=True) for m in model.modules()
               if type(m).__name__.endswith("MultiscaleDeformableAttention")]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def family_of(model: nn.Module) -> str:
    from detrdistill.models.build import family_of_model_type

    fam = family_of_model_type(getattr(model.config, "model_type", None))
    if fam is None:
        raise OnnxExportError(f"model_type {model.config.model_type!r} is not a supported family")
    return fam


def takes_pixel_mask(model: nn.Module) -> bool:
    """Whether the model reads a pixel mask (its family's ``pixel_mask`` capability): the graph then takes one."""
    from detrdistill.models.families import family_spec

    return "pixel_mask" in family_spec(family_of(model)).capabilities


def example_inputs(model: nn.Module, batch: int = 1, height: int = 320, width: int = 320,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised pixels (and a full mask for mask-aware families) of the given size."""
    g = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.randn(batch, 3, height, width, generator=g)}
    if takes_pixel_mask(model):
        inputs["pixel_mask"] = torch.ones(batch, height, width, dtype=torch.long)
    return inputs


def export_onnx(model: nn.Module, out: str | Path, height: int = 320, width: int = 320,
                opset: int = 17, with_mask: bool | None = None) -> Path:
    """Write ``model`` (a transformers detector) to ``out`` as ONNX; atomic. Returns the path.

    height/width: the example input size traced (the graph accepts other sizes, multiples of 32).
    with_mask: give the graph a ``pixel_mask`` input (default: for the mask-aware families).
    """
    family_of(model)  # refuses unsupported models
    if height % 32 or width % 32:
        raise OnnxExportError(f"export size {height}x{width}: both sides must be multiples of 32")
    model = model.eval()
    inputs = example_inputs(model, 1, height, width)
    if with_mask is False:
        inputs.pop("pixel_mask", None)
    names = list(inputs)
    axes = {"pixel_values": {0: "batch"}, "pixel_mask": {0: "batch"}, "logits": {0: "batch"},
            "pred_boxes": {0: "batch"}}
    axes["pixel_values"].update({2: "height", 3: "width"})
    axes["pixel_mask"].update({1: "height", 2: "width"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import io
    import warnings

    from detrdistill.io_atomic import write_atomic

    graph = io.BytesIO()  # traced in memory: only the write below can fail for want of disk
    with float32_reference_points(model), traced_spatial_shapes(model), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
        torch.onnx.export(DetectorForExport(model, "pixel_mask" in inputs), tuple(inputs[n] for n in names),
                          graph, dynamo=False, opset_version=opset, input_names=names,
                          output_names=["logits", "pred_boxes"],
                          dynamic_axes={k: v for k, v in axes.items() if k in names or k in ("logits", "pred_boxes")})
    return write_atomic(out, graph.getvalue())


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session (raises :class:`OnnxExportError` when onnxruntime is missing)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxExportError("onnxruntime is not installed; pip install 'detrdistill[onnx]'") from None
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def max_abs_difference(model: nn.Module, session, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |PyTorch - onnxruntime| of logits and boxes on ``inputs``."""
    with torch.no_grad():
        ref = DetectorForExport(model.eval(), "pixel_mask" in inputs)(**inputs)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})
    return {name: float((torch.from_numpy(g) - r).abs().max()) for name, g, r in zip(("logits", "pred_boxes"), got, ref)}


def export_model_dir(model_dir: str | Path, out: str | Path, height: int = 320, width: int = 320,
                     opset: int = 17, check: bool = True) -> dict:
    """``detrdistill export``: load a saved model directory, write ONNX, and (``check``) compare
    onnxruntime with PyTorch on random input of a size other than the traced one.

    Returns dict(path, max_abs_diff (or None when unchecked), inputs).
    """
    from detrdistill.models.build import load_detector

    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise OnnxExportError(f"{model_dir}: not a model directory (no config.json); give a run's model/ folder")
    try:
        import onnx  # noqa: F401  (the TorchScript exporter needs it)
    except ImportError:
        raise OnnxExportError("onnx is not installed; pip install 'detrdistill[onnx]'") from None
    from detrdistill.output_folder import claim_output

    model = load_detector(model_dir).eval()
    with claim_output(Path(out).parent, [("model", model_dir)], "--out", written=out):
        path = export_onnx(model, out, height, width, opset)
    diff = None
    if check:
        inputs = example_inputs(model, 2, height + 32, width, seed=1)
        diff = max_abs_difference(model, onnx_session(path), inputs)
    return {"path": path, "max_abs_diff": diff, "inputs": list(example_inputs(model, 1, 32, 32))}
