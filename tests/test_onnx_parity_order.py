"""The export check compares onnxruntime's queries with PyTorch's as sets per image: the same detections in another
query order (near-tied top-k scores select the same queries in another order) are no difference; a wrong value, or
a query swapped across images, is. Stubs stand in for the model and for onnxruntime (no export needed)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detrdistill.export import onnx_export
from detrdistill.export.onnx_export import matched_query_order, max_abs_difference

B, N, C = 2, 30, 5


class StubSession:
    """``run`` returns the given outputs as numpy arrays, as onnxruntime does."""

    def __init__(self, outputs):
        self.outputs = outputs

    def run(self, _names, _feed):
        return [t.numpy() for t in self.outputs]


@pytest.fixture
def ref(monkeypatch):
    """PyTorch's (logits [B, N, C], boxes [B, N, 4]), distinct rows; the export wrapper returns them."""
    g = torch.Generator().manual_seed(0)
    out = [torch.randn(B, N, C, generator=g) * 3, torch.rand(B, N, 4, generator=g)]

    class Wrapper(nn.Module):
        def __init__(self, model, with_mask):
            super().__init__()

        def forward(self, **_inputs):
            return tuple(out)

    monkeypatch.setattr(onnx_export, "DetectorForExport", Wrapper)
    return out


INPUTS = {"pixel_values": torch.zeros(B, 3, 32, 32)}


def test_a_reordering_of_the_same_queries_is_no_difference(ref):
    perms = [torch.randperm(N, generator=torch.Generator().manual_seed(b + 1)) for b in range(B)]
    permuted = [torch.stack([t[b, perms[b]] for b in range(B)]) for t in ref]
    assert max((p - r).abs().max().item() for p, r in zip(permuted, ref)) > 0.5  # the plain comparison fails
    diff = max_abs_difference(nn.Identity(), StubSession(permuted), INPUTS)
    assert max(diff.values()) == 0.0, diff
    order = matched_query_order(permuted, ref)
    for b in range(B):  # the order found undoes the permutation
        assert torch.equal(perms[b][order[b]], torch.arange(N))


def test_a_wrong_value_or_a_query_from_another_image_is_a_difference(ref):
    wrong = [t.clone() for t in ref]
    wrong[1][0, 3, 2] += 0.05  # one box side
    diff = max_abs_difference(nn.Identity(), StubSession(wrong), INPUTS)
    assert diff["pred_boxes"] == pytest.approx(0.05, abs=1e-6) and diff["logits"] == 0.0
    swapped = [t.clone() for t in ref]
    for t, r in zip(swapped, ref):  # query 0 of the two images exchanged: not a reordering within an image
        t[0, 0], t[1, 0] = r[1, 0], r[0, 0]
    diff = max_abs_difference(nn.Identity(), StubSession(swapped), INPUTS)
    assert max(diff.values()) > 0.5, diff
