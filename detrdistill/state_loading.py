"""The one strict state loader: a state dict that does not fit a module is one line naming the keys at fault."""
from __future__ import annotations

from typing import Mapping

from torch import Tensor, nn

from detrdistill.errors import CheckpointError

__all__ = ["load_state_strictly"]


def load_state_strictly(module: nn.Module, state: Mapping[str, Tensor], skip_missing: tuple[str, ...] = (),
                        what: str = "the model") -> None:
    """``module.load_state_dict(state)`` that raises :class:`CheckpointError` naming the first missing and unexpected
    keys; keys starting with ``skip_missing`` may be absent (a distiller's frozen teacher, never checkpointed)."""
    missing, unexpected = module.load_state_dict(dict(state), strict=False)
    missing = [k for k in missing if not k.startswith(skip_missing)] if skip_missing else list(missing)
    if missing or unexpected:
        raise CheckpointError(f"checkpoint does not fit {what} (missing {missing[:3]}, unexpected "
                              f"{list(unexpected)[:3]}); was it written with another config?")
