"""What an exported ``.onnx`` detector says about itself: its ``metadata_props``, enough to run it without this package.

Every value is a JSON string (``docs/onnx.md`` shows how to use them with onnxruntime, numpy and PIL only):

==================  ==========================================================================================
key                 value
==================  ==========================================================================================
format              ``"detrdistill-detector/1"``
family              the model family (``detrdistill.models.families``)
inputs              the graph's inputs: ``["pixel_values"]`` or ``["pixel_values", "pixel_mask"]``
id2label            ``{"0": "cat", ...}``: the class name of each output label
category_ids        ``{"0": 1, ...}``: the dataset's category id of each label (only when the model folder records
                    them, see :mod:`detrdistill.export.category_ids`)
resize              the processor's ``size`` (``{"shortest_edge": S, "longest_edge": L}``: short side S, long
                    side at most L, transformers' ``get_size_with_aspect_ratio``; or ``{"height", "width"}``) plus
                    ``"resample"`` (the PIL filter name, e.g. ``"bilinear"``); absent when not resized
rescale_factor      pixel values (0-255) are multiplied by it (1/255)
image_mean          per-channel mean subtracted after rescaling (RGB)
image_std           per-channel std divided by after that
padding             ``{"side": "bottom_right", "value": 0, "to": "batch"}`` (pad to the batch's largest image;
                    ``pixel_mask`` 1 on real pixels) or ``{..., "to": "fixed", "height": H, "width": W}`` (every
                    image padded to H x W; the model ignores padding)
postprocess         ``{"activation": "sigmoid" | "softmax", "top_k": 100, "boxes": "cxcywh"}``: see
                    :class:`~detrdistill.models.families.Postprocessing`; boxes are normalised to the resized,
                    un-padded image, so multiplying by the original (width, height) gives original pixels
preprocessor_config the transformers image processor's full settings (its ``preprocessor_config.json``)
input_size          ``{"height": H, "width": W}``: the graph's only input size (a family with
                    ``FamilySpec.onnx_static_size``: traced at its processor's square pad, the ``padding`` size);
                    absent when height and width are dynamic
==================  ==========================================================================================
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from detrdistill.errors import DetrDistillError

FORMAT = "detrdistill-detector/1"
PIL_FILTERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}

__all__ = ["FORMAT", "OnnxModelInfo", "OnnxMetadataError", "preprocessing_metadata", "with_metadata",
           "read_metadata"]


class OnnxMetadataError(DetrDistillError, ValueError):
    """An .onnx file without (or with unreadable) detrdistill metadata."""


@dataclass
class OnnxModelInfo:
    """The metadata of an exported detector (see the module docstring for each field)."""
    family: str
    inputs: list[str]
    id2label: dict[int, str]
    postprocess: dict[str, Any]
    category_ids: dict[int, int] | None = None
    preprocessing: dict[str, Any] | None = None   # resize, rescale_factor, image_mean, image_std, padding
    preprocessor_config: dict[str, Any] | None = None
    input_size: tuple[int, int] | None = None     # (H, W) of a static-size graph; None: dynamic

    @property
    def activation(self) -> str:
        return self.postprocess["activation"]

    @property
    def top_k(self) -> int:
        return int(self.postprocess["top_k"])

    def to_props(self) -> dict[str, str]:
        props = {"format": FORMAT, "family": self.family, "inputs": self.inputs,
                 "id2label": {str(k): v for k, v in sorted(self.id2label.items())}, "postprocess": self.postprocess}
        if self.category_ids is not None:
            props["category_ids"] = {str(k): v for k, v in sorted(self.category_ids.items())}
        props.update(self.preprocessing or {})
        if self.preprocessor_config is not None:
            props["preprocessor_config"] = self.preprocessor_config
        if self.input_size is not None:
            props["input_size"] = {"height": int(self.input_size[0]), "width": int(self.input_size[1])}
        return {k: v if isinstance(v, str) else json.dumps(v) for k, v in props.items()}

    @classmethod
    def from_props(cls, props: dict[str, str], where: str) -> "OnnxModelInfo":
        if props.get("format") != FORMAT:
            raise OnnxMetadataError(f"{where}: no detrdistill metadata (format {props.get('format')!r}, expected "
                                    f"{FORMAT!r}); export it again with `detrdistill export MODEL --format onnx`")
        try:
            get = {k: (v if k in ("format", "family") else json.loads(v)) for k, v in props.items()}
            pre = {k: get[k] for k in ("resize", "rescale_factor", "image_mean", "image_std", "padding") if k in get}
            cats = get.get("category_ids")
            size = get.get("input_size")
            return cls(family=get["family"], inputs=list(get["inputs"]),
                       id2label={int(k): v for k, v in get["id2label"].items()}, postprocess=dict(get["postprocess"]),
                       category_ids=None if cats is None else {int(k): int(v) for k, v in cats.items()},
                       preprocessing=pre or None, preprocessor_config=get.get("preprocessor_config"),
                       input_size=None if size is None else (int(size["height"]), int(size["width"])))
        except (KeyError, ValueError, TypeError, AttributeError) as e:
            raise OnnxMetadataError(f"{where}: unreadable detrdistill metadata ({type(e).__name__}: {e}); export "
                                    "it again") from None


def preprocessing_metadata(processor_config: dict[str, Any]) -> dict[str, Any]:
    """The ``resize`` / ``rescale_factor`` / ``image_mean`` / ``image_std`` / ``padding`` entries of a transformers
    image processor's settings (``processor.to_dict()``)."""
    c = processor_config
    out: dict[str, Any] = {}
    if c.get("do_resize", True) and c.get("size"):
        out["resize"] = {**c["size"], "resample": PIL_FILTERS.get(c.get("resample", 2), str(c.get("resample")))}
    out["rescale_factor"] = float(c.get("rescale_factor", 1 / 255)) if c.get("do_rescale", True) else 1.0
    if c.get("do_normalize", True):
        out["image_mean"], out["image_std"] = list(c["image_mean"]), list(c["image_std"])
    else:
        out["image_mean"], out["image_std"] = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]
    padding: dict[str, Any] = {"side": "bottom_right", "value": 0, "to": "batch"}
    if c.get("do_pad", True) and c.get("pad_size"):
        padding.update(to="fixed", height=int(c["pad_size"]["height"]), width=int(c["pad_size"]["width"]))
    out["padding"] = padding
    return out


def with_metadata(graph: bytes, info: OnnxModelInfo) -> bytes:
    """The serialised ONNX model ``graph`` with its ``metadata_props`` replaced by ``info``."""
    import onnx

    model = onnx.load_from_string(graph)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, info.to_props())
    return model.SerializeToString()


def read_metadata(session_or_path, where: str | None = None) -> OnnxModelInfo:
    """The :class:`OnnxModelInfo` of an onnxruntime session (or of the file at a path; needs ``onnx``)."""
    if isinstance(session_or_path, (str, Path)):
        import onnx

        props = {p.key: p.value for p in onnx.load(str(session_or_path), load_external_data=False).metadata_props}
        return OnnxModelInfo.from_props(props, where or str(session_or_path))
    props = dict(session_or_path.get_modelmeta().custom_metadata_map)
    return OnnxModelInfo.from_props(props, where or "onnx model")
