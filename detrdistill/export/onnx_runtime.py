"""An exported ``.onnx`` detector run by onnxruntime, as ``predict`` and ``eval`` use it.

:class:`OnnxDetector` runs the graph on torch tensors and knows, from the file's metadata
(:mod:`detrdistill.export.onnx_metadata`), its classes, the dataset's category ids, its image processor (rebuilt
from the saved ``preprocessor_config``, so pixels are those of the PyTorch path) and its post-processing.
:class:`OnnxAdapter` gives it the adapter interface :func:`detrdistill.engine.evaluator.evaluate` reads
(``adapter(pixel_values, pixel_mask)`` -> ``logits`` / ``boxes`` [L=1, B, N, ...], ``class_activation``).

A static-size graph (metadata ``input_size``, ``FamilySpec.onnx_static_size``) takes only that size: the detector
refuses another in one line (not onnxruntime's message); the adapter first pads a smaller eval batch to it
bottom/right (zeros, mask 0), the padding its processor applies (``padding`` ``"to": "fixed"``), so ``eval`` scores
it as ``predict`` feeds it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from detrdistill.export.onnx_export import OnnxExportError, onnx_session
from detrdistill.export.onnx_metadata import OnnxModelInfo, read_metadata

__all__ = ["OnnxDetector", "OnnxAdapter", "is_onnx_file"]


def is_onnx_file(path: str | Path) -> bool:
    """Whether ``path`` names an ONNX model (by its ``.onnx`` suffix)."""
    return str(path).lower().endswith(".onnx")


class OnnxDetector:
    """``(pixel_values [B, 3, H, W], pixel_mask [B, H, W] | None) -> (logits [B, N, C'], pred_boxes [B, N, 4])``."""

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.session = onnx_session(self.path, threads)
        self.info: OnnxModelInfo = read_metadata(self.session, str(self.path))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        size = self.info.input_size
        if size is not None and tuple(pixel_values.shape[-2:]) != size:
            raise OnnxExportError(f"{self.path}: the graph takes only {size[0]}x{size[1]} inputs (a static-size "
                                  f"export, metadata input_size), got {pixel_values.shape[-2]}x"
                                  f"{pixel_values.shape[-1]}; pad images to {size[0]}x{size[1]} as its preprocessing "
                                  "says (or export the model again from a folder whose processor pads to this size)")
        feed = {"pixel_values": pixel_values.detach().float().cpu().numpy()}
        if "pixel_mask" in self.input_names:
            if pixel_mask is None:
                b, _, h, w = pixel_values.shape
                pixel_mask = torch.ones(b, h, w, dtype=torch.long)
            feed["pixel_mask"] = pixel_mask.detach().cpu().numpy().astype(np.int64)
        logits, boxes = self.session.run(["logits", "pred_boxes"], feed)
        return torch.from_numpy(logits), torch.from_numpy(boxes)

    def real_frame(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """As calling it, with boxes as fractions of each image's real pixels: a graph without a ``pixel_mask`` input
        (RT-DETR, D-FINE, DEIMv2) predicts fractions of its padded input, which this divides by each image's share
        of it (what the PyTorch adapters and ``predict`` report)."""
        logits, boxes = self(pixel_values, pixel_mask)
        if "pixel_mask" not in self.input_names:
            from detrdistill.models.adapters.base import boxes_to_real_frame

            boxes = boxes_to_real_frame(boxes, pixel_mask)
        return logits, boxes

    def image_processor(self):
        """The transformers image processor the model was exported with (from the metadata)."""
        config = self.info.preprocessor_config
        if not config:
            raise OnnxExportError(f"{self.path}: its metadata has no pre-processing (exported from a model folder "
                                  "without preprocessor_config.json); export it again from a run's model/ folder")
        from detrdistill.export.processor import processor_from_dict

        try:
            processor = processor_from_dict(config)
        except ValueError as e:
            raise OnnxExportError(f"{self.path}: metadata preprocessor_config: {e}") from None
        from detrdistill.export.onnx_export import processor_pad_size

        size, pad = self.info.input_size, processor_pad_size(processor)
        if size is not None and pad != size:
            padded = f"{pad[0]}x{pad[1]}" if pad else "the batch's largest image"
            raise OnnxExportError(f"{self.path}: the graph takes only {size[0]}x{size[1]} inputs (metadata "
                                  f"input_size) but its preprocessor_config pads to {padded}; export the model again "
                                  "from its model folder")
        return processor


def pad_to(pixel_values: Tensor, pixel_mask: Tensor | None, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """[B, 3, h, w] pixels (+ [B, h, w] mask, None = all real) zero-padded bottom/right to ``size`` when no side
    is larger (else unchanged: the detector refuses them); the mask is 0 on the added pixels."""
    b, _, h, w = pixel_values.shape
    if pixel_mask is None:
        pixel_mask = torch.ones(b, h, w, dtype=torch.long, device=pixel_values.device)
    dh, dw = size[0] - h, size[1] - w
    if dh < 0 or dw < 0 or (dh, dw) == (0, 0):
        return pixel_values, pixel_mask
    pad = torch.nn.functional.pad
    return pad(pixel_values, (0, dw, 0, dh)), pad(pixel_mask, (0, dw, 0, dh))


@dataclass
class _StageOutputs:
    logits: Tensor        # [1, B, N, C'] (one stage: the final one)
    boxes: Tensor         # [1, B, N, 4]
    class_activation: str


class OnnxAdapter:
    """The slice of the adapter interface evaluation uses, over an :class:`OnnxDetector` (CPU, inference only)."""

    def __init__(self, detector: OnnxDetector):
        self.detector = detector
        self.training = False

    def __call__(self, pixel_values: Tensor, pixel_mask: Tensor | None = None) -> _StageOutputs:
        size = self.detector.info.input_size
        if size is not None:
            pixel_values, pixel_mask = pad_to(pixel_values, pixel_mask, size)
        logits, boxes = self.detector.real_frame(pixel_values, pixel_mask)
        return _StageOutputs(logits[None].to(pixel_values.device), boxes[None].to(pixel_values.device),
                             self.detector.info.activation)

    def eval(self) -> "OnnxAdapter":
        return self

    def train(self, mode: bool = True) -> "OnnxAdapter":
        return self  # nothing to train: always inference

    def to(self, *args, **kwargs) -> "OnnxAdapter":
        return self
