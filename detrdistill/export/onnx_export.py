"""ONNX export of a saved detector (``detrdistill export MODEL --format onnx --out FILE``).

The graph takes ``pixel_values`` FloatTensor[B, 3, H, W] (normalised as the saved image processor does)
and, for the families with the ``pixel_mask`` capability (the registry's
:class:`~detrdistill.models.families.FamilySpec`), ``pixel_mask`` LongTensor[B, H, W]; it returns ``logits``
[B, Q, C'] and ``pred_boxes`` [B, Q, 4] (normalised cxcywh), the model's final outputs. Exported with the
TorchScript exporter (``dynamo=False``). The file's ``metadata_props`` carry its classes, pre- and
post-processing (:mod:`detrdistill.export.onnx_metadata`; how to use them: ``docs/onnx.md``).

A family that cannot be exported raises :class:`OnnxExportError` in one line: declared
(``FamilySpec.onnx_unsupported``), or the exporter's / onnxruntime's first line when tracing or loading fails.

Why Deformable DETR failed in onnxruntime (notes section 8, ``Could not find an implementation for
GridSample(16)``), measured: that export had a static input size and no ``pixel_mask`` input (transformers
then builds an all-ones mask inside the graph). The exporter folds the encoder's reference points
(``linspace`` and ``valid_ratios * height`` over the now-constant sizes) in float64 (Cast-to-DOUBLE nodes
in the encoder), so the first encoder layer's sampling grid is float64 while its value map is float32.
onnxruntime's CPU GridSample kernel needs input and grid of one element type, so no kernel matches.
It is neither the rank (4-D) nor the mode (bilinear, zeros padding). With dynamic height/width, or a
``pixel_mask`` input, the grid stays float32; :func:`float32_reference_points` additionally computes the
reference points in the valid ratios' dtype during export (the same values in PyTorch), which fixes the static,
mask-less case too (tested), and without ``linspace``, whose export divides by zero for a level of side 1.

A second trace problem: transformers builds ``spatial_shapes`` with ``torch.as_tensor(list of sizes)``,
a constant in the trace, so offsets were normalised by the export size at every other size (logits off
by ~0.03 on a tiny model); :func:`traced_spatial_shapes` rebuilds it from the traced sizes.

Dynamic axes: batch, height and width (parity at a second size and batch is tested), except for a family with
``FamilySpec.onnx_static_size`` (RF-DETR): its graph is traced at exactly its image processor's square pad, the one
size every image is padded to, and only the batch is dynamic. What cannot be traced size-generically is then
computed in PyTorch for that size: :func:`constant_position_embeddings` (a ViT's ``interpolate_pos_encoding``,
RF-DETR's antialiased bicubic resize, ``aten::_upsample_bicubic2d_aa``, which the TorchScript exporter refuses at
opsets 17-20) makes the resized position embeddings a constant, the values PyTorch computes (exact parity). The
metadata records the size (``input_size``); :class:`~detrdistill.export.onnx_runtime.OnnxDetector` refuses another.
The traced size must be one the model accepts (``FamilySpec.sides(config)``: multiples of 32 for most families;
RT-DETR's FPN needs it).
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from torch import nn

from detrdistill.errors import DetrDistillError
from detrdistill.export.onnx_metadata import OnnxModelInfo, preprocessing_metadata, with_metadata
from detrdistill.models.families import spec_of

log = logging.getLogger("detrdistill")
DEFAULT_SIDE = 320  # traced height / width when none is given (and the family does not fix it)


class OnnxExportError(DetrDistillError):
    """The model cannot be exported, onnx/onnxruntime is missing, or an exported graph cannot run the input."""


class DetectorForExport(nn.Module):
    """``(pixel_values[, pixel_mask]) -> (logits, pred_boxes)`` around a transformers detector."""

    def __init__(self, model: nn.Module, with_mask: bool):
        super().__init__()
        self.model, self.with_mask = model, with_mask

    def forward(self, pixel_values: torch.Tensor, pixel_mask: torch.Tensor | None = None):
        out = self.model(pixel_values=pixel_values, pixel_mask=pixel_mask if self.with_mask else None)
        return out.logits, out.pred_boxes


def exportable_reference_points(spatial_shapes_list, valid_ratios, device):
    """transformers' ``DeformableDetrEncoder.get_reference_points`` with the centres built by ``arange`` and the
    result in the valid ratios' dtype: the same values in PyTorch (tested), but traceable for every level size.

    transformers' ``linspace(0.5, side - 0.5, side)`` exports as ``start + i * (end - start) / (side - 1)``, which
    is 0 / 0 = NaN for a level of side 1 (e.g. the coarsest of 4 levels of a small input): its tokens came out
    wrong (measured: encoder output off by 0.5 on those tokens, logits by 1e-3)."""
    dtype = valid_ratios.dtype
    points = []
    for level, (height, width) in enumerate(spatial_shapes_list):
        ref_y, ref_x = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                                      torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
        ref_y = ref_y.reshape(-1)[None] / (valid_ratios[:, None, level, 1] * height)
        ref_x = ref_x.reshape(-1)[None] / (valid_ratios[:, None, level, 0] * width)
        points.append(torch.stack((ref_x, ref_y), -1))
    return (torch.cat(points, 1)[:, :, None] * valid_ratios[:, None]).to(dtype)


@contextlib.contextmanager
def float32_reference_points(model: nn.Module):
    """While active, Deformable-DETR-style encoders (a ``get_reference_points(spatial_shapes_list, valid_ratios,
    device)``) compute their reference points with :func:`exportable_reference_points`."""
    import inspect

    patched = []
    for m in model.modules():
        orig = getattr(type(m), "get_reference_points", None)
        if orig is None or not type(m).__name__.endswith("Encoder"):
            continue
        if list(inspect.signature(orig).parameters) != ["spatial_shapes_list", "valid_ratios", "device"]:
            continue
        m.get_reference_points = exportable_reference_points  # instance attribute shadows the staticmethod
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


@contextlib.contextmanager
def constant_position_embeddings(model: nn.Module, inputs: dict[str, torch.Tensor]):
    """While active, every module with an ``interpolate_pos_encoding(embeddings, height, width)`` (a ViT's
    embeddings, e.g. RF-DETR's DINOv2 backbone) returns the tensor it computes in PyTorch at the size of ``inputs``:
    a constant in a graph traced at that size, which must then have static height / width.

    The values are recorded in one forward of ``model`` on ``inputs`` on entry (so they are what the unpatched
    method returns, exactly; tested); a call at another size while active raises :class:`OnnxExportError`.
    The patch is an instance attribute, removed on exit.
    """
    modules = [m for m in model.modules() if callable(getattr(type(m), "interpolate_pos_encoding", None))]
    values: dict[nn.Module, tuple[tuple[int, int], torch.Tensor]] = {}

    def recording(m: nn.Module):
        original = m.interpolate_pos_encoding

        def record(embeddings, height, width):
            out = original(embeddings, height, width)
            values[m] = ((int(height), int(width)), out.detach())
            return out
        return record

    def constant(m: nn.Module, size: tuple[int, int], value: torch.Tensor):
        def fixed(embeddings, height, width):
            if (int(height), int(width)) != size:
                raise OnnxExportError(f"{type(m).__name__}: position embeddings fixed for {size[0]}x{size[1]}, "
                                      f"called at {int(height)}x{int(width)}")
            return value
        return fixed

    try:
        if modules:
            for m in modules:
                m.interpolate_pos_encoding = recording(m)
            with torch.no_grad():
                model(**inputs)
            for m in modules:
                if m in values:
                    m.interpolate_pos_encoding = constant(m, *values[m])
                else:  # not on the forward path: nothing to fix
                    del m.interpolate_pos_encoding
        yield
    finally:
        for m in modules:
            vars(m).pop("interpolate_pos_encoding", None)


def takes_pixel_mask(model: nn.Module) -> bool:
    """Whether the model reads a pixel mask (its family's ``pixel_mask`` capability): the graph then takes one."""
    return "pixel_mask" in spec_of(model).capabilities


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line[:limit]}" if line else type(e).__name__


def model_info(model: nn.Module, inputs: list[str], processor=None) -> OnnxModelInfo:
    """The metadata of ``model``'s graph: classes, dataset category ids (when its config records them), the
    family's post-processing and (with its image processor) the pre-processing."""
    from detrdistill.export.category_ids import category_ids_of

    spec = spec_of(model)
    post = spec.postprocessing
    pre_cfg = processor.to_dict() if processor is not None else None
    return OnnxModelInfo(family=spec.name, inputs=list(inputs),
                         id2label={int(k): str(v) for k, v in model.config.id2label.items()},
                         postprocess={"activation": post.activation, "top_k": post.top_k, "boxes": "cxcywh"},
                         category_ids=category_ids_of(model.config),
                         preprocessing=preprocessing_metadata(pre_cfg) if pre_cfg is not None else None,
                         preprocessor_config=pre_cfg)


def processor_pad_size(processor) -> tuple[int, int] | None:
    """(height, width) every image is padded to by ``processor`` (a ``pad_size``: ``square_padding`` families), or
    None (padded to the batch's largest image, or no processor)."""
    if processor is None:
        return None
    padding = preprocessing_metadata(processor.to_dict())["padding"]
    return (padding["height"], padding["width"]) if padding["to"] == "fixed" else None


def traced_size(model: nn.Module, height: int | None = None, width: int | None = None,
                processor=None) -> tuple[int, int]:
    """The (height, width) :func:`export_onnx` traces: the given sides (default 320 each), except for a family
    with ``FamilySpec.onnx_static_size`` exported with its processor: that processor's square pad, the only size
    its graph takes (a different size given raises :class:`OnnxExportError`)."""
    spec = spec_of(model)
    pad = processor_pad_size(processor) if spec.onnx_static_size else None
    if pad is None:
        return (height or DEFAULT_SIDE, width or DEFAULT_SIDE)
    if (height or pad[0], width or pad[1]) != pad:
        raise OnnxExportError(f"export size {height or pad[0]}x{width or pad[1]}: a {spec.name} graph has a static "
                              f"input size, its image processor's square pad {pad[0]}x{pad[1]} "
                              "(FamilySpec.onnx_static_size); leave --height / --width out")
    return pad


def example_inputs(model: nn.Module, batch: int = 1, height: int = 320, width: int = 320,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Random normalised pixels (and a full mask for mask-aware families) of the given size."""
    g = torch.Generator().manual_seed(seed)
    inputs = {"pixel_values": torch.randn(batch, 3, height, width, generator=g)}
    if takes_pixel_mask(model):
        inputs["pixel_mask"] = torch.ones(batch, height, width, dtype=torch.long)
    return inputs


def export_onnx(model: nn.Module, out: str | Path, height: int | None = None, width: int | None = None,
                opset: int = 17, with_mask: bool | None = None, processor=None) -> Path:
    """Write ``model`` (a transformers detector) to ``out`` as ONNX with its metadata; atomic. Returns the path.

    height/width: the example input size traced (default 320; the graph accepts other sizes), see
    :func:`traced_size`: a family with ``FamilySpec.onnx_static_size`` is traced at its processor's square pad and
    its graph takes only that size (static height / width, recorded in the metadata's ``input_size``).
    with_mask: give the graph a ``pixel_mask`` input (default: for the families with the capability).
    processor: the model's image processor, whose settings go into the metadata (see
    :mod:`detrdistill.export.onnx_metadata`; without it the file has no pre-processing entries).
    Raises :class:`OnnxExportError` (one line) when the family or the trace cannot be exported.
    """
    spec = spec_of(model)  # refuses unsupported models
    if spec.onnx_unsupported:
        raise OnnxExportError(f"the {spec.name} family cannot be exported to ONNX: {spec.onnx_unsupported}")
    height, width = traced_size(model, height, width, processor)
    sides, static = spec.sides(model.config), spec.onnx_static_size is not None
    if not sides.accepts(height, width):
        raise OnnxExportError(f"export size {height}x{width}: {spec.name} needs {sides.describe()}")
    model = model.eval()
    inputs = example_inputs(model, 1, height, width)
    if with_mask is False:
        inputs.pop("pixel_mask", None)
    names = list(inputs)
    axes = {"pixel_values": {0: "batch"}, "pixel_mask": {0: "batch"}, "logits": {0: "batch"},
            "pred_boxes": {0: "batch"}}
    if not static:
        axes["pixel_values"].update({2: "height", 3: "width"})
        axes["pixel_mask"].update({1: "height", 2: "width"})
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    import io
    import warnings

    from detrdistill.io_atomic import write_atomic

    graph = io.BytesIO()  # traced in memory: only the write below can fail for want of disk
    try:
        fixed = constant_position_embeddings(model, inputs) if static else contextlib.nullcontext()
        # in eval mode: the exporter restores the wrapper's mode afterwards, recursively, and a new module is in
        # train mode (the model was left training: Group-DETR models then return all query groups)
        wrapper = DetectorForExport(model, "pixel_mask" in inputs).eval()
        with float32_reference_points(model), traced_spatial_shapes(model), fixed, torch.no_grad(), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes
            torch.onnx.export(wrapper, tuple(inputs[n] for n in names),
                              graph, dynamo=False, opset_version=opset, input_names=names,
                              output_names=["logits", "pred_boxes"],
                              dynamic_axes={k: v for k, v in axes.items()
                                            if k in names or k in ("logits", "pred_boxes")})
        info = model_info(model, names, processor)
        info.input_size = (height, width) if static else None
        content = with_metadata(graph.getvalue(), info)
    except Exception as e:  # the exporter's messages run to thousands of lines: its first one, and why
        if isinstance(e, OnnxExportError):
            raise
        raise OnnxExportError(f"the {spec.name} model cannot be exported to ONNX ({_first_line(e)})") from e
    return write_atomic(out, content)


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session; :class:`OnnxExportError` (one line) when onnxruntime is missing or cannot
    load the file."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise OnnxExportError("onnxruntime is not installed; pip install 'detrdistill[onnx]'") from None
    if not Path(path).is_file():
        raise OnnxExportError(f"{path}: no such ONNX file")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime's Fail / InvalidGraph / NotImplemented ...
        raise OnnxExportError(f"{path}: onnxruntime cannot load it ({_first_line(e)})") from e


def matched_query_order(got: list[torch.Tensor], ref: list[torch.Tensor]) -> torch.Tensor:
    """Per image, the order of ``got``'s queries that best matches ``ref``'s: [B, N] indices into ``got``'s queries
    (min-cost assignment on the summed |difference| of every output). Query order is not part of a detection, and a
    family that selects its queries by top-k over the encoder's proposals (RT-DETR, D-FINE, ...) may select the same
    queries in another order when scores nearly tie (random weights, noise input)."""
    from scipy.optimize import linear_sum_assignment

    order = []
    for b in range(ref[0].shape[0]):
        cost = sum(torch.cdist(r[b].flatten(1).double(), g[b].flatten(1).double(), p=1) for g, r in zip(got, ref))
        rows, cols = linear_sum_assignment(cost.numpy())
        order.append(torch.as_tensor(cols[rows.argsort()]))
    return torch.stack(order)


def max_abs_difference(model: nn.Module, session, inputs: dict[str, torch.Tensor]) -> dict[str, float]:
    """Largest |PyTorch - onnxruntime| of logits and boxes on ``inputs``, each onnxruntime query compared with the
    PyTorch query of the same image it matches (:func:`matched_query_order`): a reordering of the same queries is
    not a difference, a wrong value is."""
    with torch.no_grad():
        ref = [t.float() for t in DetectorForExport(model.eval(), "pixel_mask" in inputs)(**inputs)]
    got = [torch.from_numpy(g).float() for g in session.run(None, {k: v.numpy() for k, v in inputs.items()})]
    names = ("logits", "pred_boxes")
    plain = {name: float((g - r).abs().max()) for name, g, r in zip(names, got, ref)}
    if max(plain.values()) < 1e-3:  # the same order: no assignment needed
        return plain
    order = matched_query_order(got, ref)
    matched = {name: float((torch.stack([g[b, order[b]] for b in range(len(order))]) - r).abs().max())
               for name, g, r in zip(names, got, ref)}
    return min(plain, matched, key=lambda d: max(d.values()))


def export_model_dir(model_dir: str | Path, out: str | Path, height: int | None = None, width: int | None = None,
                     opset: int = 17, check: bool = True, processor=None) -> dict:
    """``detrdistill export``: load a saved model directory, write ONNX (with the metadata of the model folder's
    image processor, or ``processor``), and (``check``) compare onnxruntime with PyTorch on random input of a
    batch of two at a size other than the traced one (a static-size graph: at the traced size).

    Returns dict(path, max_abs_diff (or None when unchecked), inputs, input_size: (H, W) of a static-size graph,
    else None).
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
    if processor is None:
        from detrdistill.export.processor import load_image_processor
        from detrdistill.models.model_dir import ModelDirError

        try:  # the model folder's processor (or one rebuilt from its run's config.yaml)
            processor = load_image_processor(model_dir, spec_of(model).name)
        except ModelDirError as e:
            log.warning("%s; the ONNX metadata will have no pre-processing (predict refuses such a file)", e)
    with claim_output(Path(out).parent, [("model", model_dir)], "--out", written=out):
        path = export_onnx(model, out, height, width, opset, processor=processor)
    height, width = traced_size(model, height, width, processor)
    static = spec_of(model).onnx_static_size is not None
    diff = None
    if check:
        other = height if static else height + spec_of(model).sides(model.config).multiple
        diff = max_abs_difference(model, onnx_session(path), example_inputs(model, 2, other, width, seed=1))
    return {"path": path, "max_abs_diff": diff, "inputs": list(example_inputs(model, 1, 32, 32)),
            "input_size": (height, width) if static else None}
