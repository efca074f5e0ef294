"""The one strict state loader: a state dict that does not fit a module is one line naming the keys at fault."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from detrdistill.errors import CheckpointError

__all__ = ["state_mismatch", "load_state_strictly"]


def state_mismatch(expected: Mapping[str, Tensor], state: Mapping[str, Tensor],
                   skip_missing: tuple[str, ...] = ()) -> str | None:
    """What keeps ``state`` from loading where ``expected`` is (``missing [...], unexpected [...], other shape
    [...]``, the first three of each), or None when it fits. Keys starting with ``skip_missing`` may be absent."""
    missing = [k for k in expected if k not in state and not (skip_missing and k.startswith(skip_missing))]
    unexpected = [k for k in state if k not in expected]
    shapes = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}, other shape {shapes[:3]}"
    return None


def load_state_strictly(module: nn.Module, state: Mapping[str, Tensor], skip_missing: tuple[str, ...] = (),
                        what: str = "the model") -> None:
    """``module.load_state_dict(state)``, or :class:`CheckpointError` (nothing loaded) naming the keys that do not fit
    (:func:`state_mismatch`); keys starting with ``skip_missing`` may be absent (a distiller's frozen teacher, never
    checkpointed)."""
    problem = state_mismatch(module.state_dict(), state, skip_missing)
    if problem:
        raise CheckpointError(f"checkpoint does not fit {what} ({problem}); was it written with another config?")
    module.load_state_dict(dict(state), strict=False)  # every key checked above; skipped ones keep their values
