"""A run stopped by a signal: saved, then reported as a failure so ``train && distill`` does not go on.

The trainer's SIGINT / SIGTERM handler lets the current step finish, writes a checkpoint, exports the
model so far and then raises :class:`TrainingInterrupted`; the CLI exits with ``128 + signal``
(130 for SIGINT / Ctrl-C, 143 for SIGTERM), the shell convention for "killed by that signal".
"""
from __future__ import annotations

import signal

from detrdistill.errors import DetrDistillError


class TrainingInterrupted(DetrDistillError):
    """Raised after a signal-stopped run has saved; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int, step: int, output_dir):
        self.signum, self.exit_code = int(signum), 128 + int(signum)
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else str(signum)
        super().__init__(f"{name}: stopped at step {step} with a checkpoint in {output_dir}; "
                         "continue with the same command and --resume")
