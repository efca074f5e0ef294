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

Given the parameters' names, the ratio is also taken per module of the student (:func:`module_group`: backbone,
input projection, encoder, decoder, heads): ``ratio_t[m] = |g_t restricted to m| / |g_own restricted to m|``. Under
AdamW every parameter's step is normalised by its own gradient history, so a module where a term's gradient is many
times the student's own follows that term, whatever the ratio over all parameters says (measured: the feature term
into an RT-DETR student, a median 0.3x overall and 3.3x, up to 9.7x, in its backbone over steps 20-200;
docs/distillation.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
from torch import Tensor

__all__ = ["GradientBalance", "TermGradient", "ModuleGradient", "gradient_balance", "module_group", "DOMINANT_RATIO",
           "MODULE_DOMINANT_RATIO"]

#: a part whose gradient norm exceeds this multiple of the student's own is reported as dominating the update
DOMINANT_RATIO = 3.0
#: the same within one module of the student (one batch is noisy there: the bar is higher)
MODULE_DOMINANT_RATIO = 5.0
#: name components that wrap a model without naming a module of its own
_WRAPPERS = {"model", "module", "_orig_mod"}


def module_group(name: str) -> str:
    """The module of the student a parameter belongs to, from its name: the first component after ``student.``
    that is not a wrapper (``model``), e.g. ``distiller.student.model.model.backbone.model.embedder.weight`` ->
    ``backbone``, ``...student.model.class_embed.0.weight`` -> ``class_embed``. Trained parameters outside the
    student (the distiller's adapters and projections) -> ``connectors``; a name without ``student`` (a bare
    model) -> its first component that is not a wrapper."""
    parts = name.split(".")
    if "student" in parts:
        parts = parts[parts.index("student") + 1:]
    elif parts[0] in ("distiller", "criterion"):
        return "connectors"
    for p in parts[:-1]:
        if p not in _WRAPPERS:
            return p
    return parts[-1]


@dataclass(frozen=True)
class TermGradient:
    """One part's gradient relative to the student's own: norm ratio and cosine."""
    name: str
    ratio: float
    cos: float


@dataclass(frozen=True)
class ModuleGradient:
    """One part's gradient relative to the student's own within one module of the student."""
    name: str
    module: str
    ratio: float


@dataclass(frozen=True)
class GradientBalance:
    """What :func:`gradient_balance` measured (see the module docstring)."""
    own_norm: float
    terms: list[TermGradient] = field(default_factory=list)
    own_share: float = 1.0
    max_norm: float = 0.0
    modules: list[ModuleGradient] = field(default_factory=list)
    own_modules: dict[str, float] = field(default_factory=dict)  # |g_own| within each module of the student

    def dominant(self, ratio: float = DOMINANT_RATIO) -> list[TermGradient]:
        """The parts whose gradient is more than ``ratio`` times the student's own."""
        return [t for t in self.terms if t.ratio > ratio]

    def dominant_modules(self, ratio: float = MODULE_DOMINANT_RATIO) -> list[ModuleGradient]:
        """(part, module) pairs where the part's gradient is more than ``ratio`` times the student's own there."""
        return [m for m in self.modules if m.ratio > ratio]

    def largest_modules(self) -> list[ModuleGradient]:
        """Per part, the module where its gradient is largest against the student's own (parts in order)."""
        best: dict[str, ModuleGradient] = {}
        for m in self.modules:
            if m.name not in best or m.ratio > best[m.name].ratio:
                best[m.name] = m
        return list(best.values())

    def line(self) -> str:
        """One log line: ``own loss |g| 380; logits 0.08x (cos +0.27), ...; in the update (clipped at 1) the student's
        own loss keeps 11 % of the progress it makes alone``."""
        parts = ", ".join(f"{t.name} {t.ratio:.2f}x (cos {t.cos:+.2f})" for t in self.terms)
        clip = f"clipped at {self.max_norm:g}" if self.max_norm > 0 else "unclipped"
        by_module = ", ".join(f"{m.name} {m.ratio:.2f}x in {m.module}" for m in self.largest_modules())
        return (f"own loss |g| {self.own_norm:.3g}; {parts or 'no other part'}; in the update ({clip}) the "
                f"student's own loss keeps {100 * self.own_share:.0f} % of the progress it makes alone"
                + (f"; largest per module: {by_module}" if by_module else ""))

    def record(self) -> dict[str, float]:
        """Flat numbers for ``metrics.jsonl``: ``grad/own_norm``, ``grad/own_share``, ``grad/<part>_ratio|_cos``,
        ``grad/own_norm/<module>``, ``grad/<part>_ratio/<module>``."""
        out = {"grad/own_norm": self.own_norm, "grad/own_share": self.own_share}
        for t in self.terms:
            out[f"grad/{t.name}_ratio"] = t.ratio
            out[f"grad/{t.name}_cos"] = t.cos
        for module, norm in self.own_modules.items():
            out[f"grad/own_norm/{module}"] = norm
        for m in self.modules:
            out[f"grad/{m.name}_ratio/{m.module}"] = m.ratio
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


def _module_norms(g: Tensor, slices: Mapping[str, list[tuple[int, int]]]) -> dict[str, float]:
    return {m: float(torch.cat([g[a:b] for a, b in spans]).norm()) for m, spans in slices.items()}


def gradient_balance(parts: Mapping[str, Tensor], params: Iterable[Tensor], own: str = "student",
                     max_norm: float = 0.0, names: Sequence[str] | None = None) -> GradientBalance:
    """Measure each part's gradient against part ``own`` over ``params`` (see the module docstring).

    parts: name -> scalar loss with its graph (kept: the caller's backward of their sum still works);
    params: the parameters the optimizer updates (those without ``requires_grad`` are skipped);
    max_norm: the clipping of the step (``optim.grad_clip``);
    names: the parameters' names, aligned with ``params``: adds the per-module ratios (:func:`module_group`;
    a module is left out where the student's own loss has no gradient, and for a part, where it has none).
    """
    params = list(params)
    if names is not None:
        names = list(names)
        if len(names) != len(params):
            raise ValueError(f"gradient_balance: {len(names)} names for {len(params)} parameters")
        names = [n for n, p in zip(names, params) if p.requires_grad]
    params = [p for p in params if p.requires_grad]
    if own not in parts:
        raise ValueError(f"gradient_balance: no part named {own!r} among {sorted(parts)}")
    if not params:
        raise ValueError("gradient_balance: no parameter requires grad")
    g_own = _flat_grad(parts[own], params)
    own_norm = float(g_own.norm())
    slices: dict[str, list[tuple[int, int]]] = {}
    if names is not None:
        start = 0
        for n, p in zip(names, params):
            slices.setdefault(module_group(n), []).append((start, start + p.numel()))
            start += p.numel()
    own_by_module = {m: v for m, v in _module_norms(g_own, slices).items() if v > 0}
    slices = {m: spans for m, spans in slices.items() if m in own_by_module}
    total = g_own.clone()
    terms, modules = [], []
    for name, loss in parts.items():
        if name == own:
            continue
        g = _flat_grad(loss, params)
        total += g
        ratio = float(g.norm()) / own_norm if own_norm > 0 else float("inf") if float(g.norm()) > 0 else 0.0
        cos = float(torch.nn.functional.cosine_similarity(g, g_own, dim=0)) if own_norm > 0 and g.norm() > 0 else 0.0
        terms.append(TermGradient(name, ratio, cos))
        modules += [ModuleGradient(name, m, v / own_by_module[m]) for m, v in _module_norms(g, slices).items() if v > 0]
    if own_norm > 0:
        unit = g_own / own_norm
        share = float(_clipped(total, max_norm) @ unit) / float(_clipped(g_own, max_norm) @ unit)
    else:
        share = 1.0
    return GradientBalance(own_norm=own_norm, terms=terms, own_share=share, max_norm=max_norm, modules=modules,
                           own_modules=own_by_module)
