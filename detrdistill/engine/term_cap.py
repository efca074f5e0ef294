"""A cap on each distillation term's pull on the update (``distill.max_term_ratio``; not in DETRDistill).

With gradient clipping, a term whose gradient is several times the student's own decides the direction of the
update, and the student's own loss then moves at a fraction of its speed: measured three times here, each time with
the distilled student ending below the student alone (the query prior of a D-FINE student under the set criterion
and late in training under its family's loss, and the DEIMv2 student with consistent-query targets;
docs/distillation.md, docs/results.md). The gradient-balance probe (:mod:`.grad_balance`) measures it; this module
acts on it.

Every ``distill.term_ratio_every`` steps (from the first step of a fresh run) the engine measures, on that step's
batch, each term's gradient norm over the trained parameters against the student's own loss's
(:func:`~.grad_balance.gradient_balance`: one extra backward per part). For a term ``t`` measured at ratio
``rho_t = |g_t| / |g_own|`` under its current weight ``w_t``::

    w_t <- min(1, w_t * R / rho_t)        (R = distill.max_term_ratio)

i.e. the weight that puts the measured term at exactly ``R`` times the student's own when it is above, and lets it
back up toward 1 when it is below. The new weights apply from that step on (its loss is recomposed from its parts)
until the next measurement; they multiply the warm-up / decay schedule's (``Distiller.term_weights``). A batch where
the student's own gradient is zero, or a term's is not finite, leaves the weights as they were. The weights are part
of the run's state (checkpointed; a resume continues with them) and each measurement writes ``cap/<term>_weight``
and ``cap/<term>_ratio`` (the ratio before the new weight) to ``metrics.jsonl``.

One process only (the measurement is not synchronised across DDP ranks): a run with several processes is refused.
"""
from __future__ import annotations

import logging
import math
from typing import Mapping

from torch import Tensor

from ..errors import ConfigError

__all__ = ["capped_weights", "recomposed_loss", "check_processes", "apply", "restore"]

log = logging.getLogger("detrdistill")


def capped_weights(ratios: Mapping[str, float], weights: Mapping[str, float], max_ratio: float) -> dict[str, float]:
    """The new weight of each measured term (see the module docstring); terms not measured keep their weight.

    ratios: term -> ``|g_t| / |g_own|`` measured with ``weights`` applied (absent weight: 1);
    max_ratio: R > 0."""
    if max_ratio <= 0:
        raise ValueError(f"capped_weights: max_ratio must be > 0, got {max_ratio}")
    new = dict(weights)
    for name, ratio in ratios.items():
        old = weights.get(name, 1.0)
        if not math.isfinite(ratio) or ratio < 0:
            continue  # the student's own gradient is zero on this batch (or the term's is not finite): no reading
        new[name] = 1.0 if ratio == 0 or old == 0 else min(1.0, old * max_ratio / ratio)
    return new


def recomposed_loss(parts: Mapping[str, Tensor], old: Mapping[str, float], new: Mapping[str, float],
                    own: str = "student") -> Tensor:
    """The step's loss with each term's part moved from its ``old`` weight to its ``new`` one: ``parts[own] +
    sum_t parts[t] * new_t / old_t`` (a part whose old weight was 0 is 0 and stays so)."""
    total = parts[own]
    for name, value in parts.items():
        if name == own:
            continue
        before, after = old.get(name, 1.0), new.get(name, 1.0)
        total = total + (value * (after / before) if before > 0 and after != before else value)
    return total


def check_processes(max_ratio: float, world: int) -> None:
    """A one-line ConfigError when the cap is asked for under several processes."""
    if max_ratio > 0 and world > 1:
        raise ConfigError(f"distill.max_term_ratio={max_ratio:g} needs one training process (this run has {world}): "
                          "the terms' gradients are measured on one process's batch; set it to 0 under DDP")


def restore(run) -> None:
    """At the start of a run's loop: refuse the cap under several processes; a resumed run's task gets the weights
    its checkpoint saved (a fresh run: none, every term at 1). Nothing for a task without the cap."""
    cap = getattr(run.task, "term_cap", None)  # optional task member (DistillTask)
    if cap is None:
        return
    check_processes(cap[0], run.world)
    run.task.term_weights = run.state.get("term_weights") or {}


def apply(run, loss: Tensor, parts: Mapping[str, Tensor], balance, max_ratio: float) -> Tensor:
    """One measurement: new term weights from ``balance`` (the step's :class:`~.grad_balance.GradientBalance`), kept
    in ``run.state`` (checkpointed) and on the task, written to metrics.jsonl (``cap/*``), logged when they change;
    returns the step's ``loss`` recomposed with them (``loss`` itself when no weight changed: the step is then
    exactly the one without the cap)."""
    old = run.task.term_weights
    ratios = {t.name: t.ratio for t in balance.terms}
    new = capped_weights(ratios, old, max_ratio)
    run.task.term_weights = run.state["term_weights"] = new
    step = run.state["step"] + 1
    run.metrics.write({"step": step, **{f"cap/{k}_ratio": v for k, v in ratios.items()},
                       **{f"cap/{k}_weight": new.get(k, 1.0) for k in ratios}})
    if all(new.get(k, 1.0) == old.get(k, 1.0) for k in ratios):
        return loss
    if any(abs(new.get(k, 1.0) - old.get(k, 1.0)) > 1e-3 for k in ratios):
        log.info("term cap at step %d (distill.max_term_ratio=%g): %s", step, max_ratio,
                 ", ".join(f"{k} {ratios[k]:.2f}x -> weight {new.get(k, 1.0):.3f}" for k in ratios))
    return recomposed_loss(parts, old, new)
