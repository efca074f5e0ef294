"""Gradient balance of a loss made of named parts: how much each part pushes the trained parameters.

A distillation step's loss is the student's own detection loss plus each distillation term. With gradient clipping
(``optim.grad_clip``, max-norm), what a step does is the clipped SUM of their gradients: a term whose gradient is
many times the student's own decides the update's direction, and the student's own loss then moves only by the share
left to it. Measured cases (docs/distillation.md, "Is a term taking over the update?"): a Conditional DETR feature
term on unnormalised features, and the query prior of an RT-DETR student under a Deformable teacher.

:func:`gradient_balance` measures it for one batch: one ``autograd.grad`` per part (the graph is kept for the real
backward), so it costs one extra backward per part and changes nothing in the step. The engine runs it at the first
step of a fresh run (``train.probe_gradients``) and every ``train.probe_gradients_every`` steps, logs one line, warns
when a part dominates, and writes the numbers to ``metrics.jsonl`` as ``grad/*``.

For parts ``own`` (the student's loss) and terms ``t`` with gradients ``g_own``, ``g_t`` over the trained parameters:

* ``ratio_t = |g_t| / |g_own|`` and ``cos_t = cos(g_t, g_own)``;
* ``own_share``: the component along ``g_own`` of the clipped total update, over that of the student's own loss
  alone clipped the same way (1.0: the terms leave the student's own progress untouched; 0.1: it moves at a tenth of
  its speed; negative: the step undoes it). Without clipping (``max_norm <= 0``) the update is the raw sum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping

import torch
from torch import Tensor

__all__ = ["GradientBalance", "TermGradient", "gradient_balance", "DOMINANT_RATIO"]

#: a part whose gradient norm exceeds this multiple of the student's own is reported as dominating the update
DOMINANT_RATIO = 3.0


@dataclass(frozen=True)
class TermGradient:
    """One part's gradient relative to the student's own: norm ratio and cosine."""
    name: str
    ratio: float
    cos: float


@dataclass(frozen=True)
class GradientBalance:
    """What :func:`gradient_balance` measured (see the module docstring)."""
    own_norm: float
    terms: list[TermGradient] = field(default_factory=list)
    own_share: float = 1.0
    max_norm: float = 0.0

    def dominant(self, ratio: float = DOMINANT_RATIO) -> list[TermGradient]:
        """The parts whose gradient is more than ``ratio`` times the student's own."""
        return [t for t in self.terms if t.ratio > ratio]

    def line(self) -> str:
        """One log line: ``own loss |g| 380; logits 0.08x (cos +0.27), ...; in the update (clipped at 1) the student's
        own loss keeps 11 % of the progress it makes alone``."""
        parts = ", ".join(f"{t.name} {t.ratio:.2f}x (cos {t.cos:+.2f})" for t in self.terms)
        clip = f"clipped at {self.max_norm:g}" if self.max_norm > 0 else "unclipped"
        return (f"own loss |g| {self.own_norm:.3g}; {parts or 'no other part'}; in the update ({clip}) the "
                f"student's own loss keeps {100 * self.own_share:.0f} % of the progress it makes alone")

    def record(self) -> dict[str, float]:
        """Flat numbers for ``metrics.jsonl``: ``grad/own_norm``, ``grad/own_share``, ``grad/<part>_ratio|_cos``."""
        out = {"grad/own_norm": self.own_norm, "grad/own_share": self.own_share}
        for t in self.terms:
            out[f"grad/{t.name}_ratio"] = t.ratio
            out[f"grad/{t.name}_cos"] = t.cos
        return out


def _flat_grad(loss: Tensor, params: list[Tensor]) -> Tensor:
    """The gradient of ``loss`` w.r.t. ``params`` as one float32 vector (zeros where a parameter is unused)."""
    if not loss.requires_grad:
        return torch.cat([p.new_zeros(p.numel(), dtype=torch.float32) for p in params])
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).float().flatten() for g, p in zip(grads, params)])


def _clipped(g: Tensor, max_norm: float) -> Tensor:
    """``g`` scaled as ``torch.nn.utils.clip_grad_norm_`` scales a gradient (max-norm ``max_norm``; <= 0: unclipped)."""
    if max_norm <= 0:
        return g
    return g * min(1.0, max_norm / (float(g.norm()) + 1e-6))


def gradient_balance(parts: Mapping[str, Tensor], params: Iterable[Tensor], own: str = "student",
                     max_norm: float = 0.0) -> GradientBalance:
    """Measure each part's gradient against part ``own`` over ``params`` (see the module docstring).

    parts: name -> scalar loss with its graph (kept: the caller's backward of their sum still works);
    params: the parameters the optimizer updates (those without ``requires_grad`` are skipped);
    max_norm: the clipping of the step (``optim.grad_clip``).
    """
    params = [p for p in params if p.requires_grad]
    if own not in parts:
        raise ValueError(f"gradient_balance: no part named {own!r} among {sorted(parts)}")
    if not params:
        raise ValueError("gradient_balance: no parameter requires grad")
    g_own = _flat_grad(parts[own], params)
    own_norm = float(g_own.norm())
    total = g_own.clone()
    terms = []
    for name, loss in parts.items():
        if name == own:
            continue
        g = _flat_grad(loss, params)
        total += g
        ratio = float(g.norm()) / own_norm if own_norm > 0 else float("inf") if float(g.norm()) > 0 else 0.0
        cos = float(torch.nn.functional.cosine_similarity(g, g_own, dim=0)) if own_norm > 0 and g.norm() > 0 else 0.0
        terms.append(TermGradient(name, ratio, cos))
    if own_norm > 0:
        unit = g_own / own_norm
        share = float(_clipped(total, max_norm) @ unit) / float(_clipped(g_own, max_norm) @ unit)
    else:
        share = 1.0
    return GradientBalance(own_norm=own_norm, terms=terms, own_share=share, max_norm=max_norm)
