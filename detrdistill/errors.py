"""The root of every error detrdistill raises on purpose.

An expected failure (bad config, bad data, an unreadable checkpoint, an unsupported model) raises a
subclass of :class:`DetrDistillError` whose message is one line naming the file or key and what to do;
the CLI prints it as ``error: ...``. Anything else is a bug and surfaces with its traceback.
"""
from __future__ import annotations


class DetrDistillError(Exception):
    """Base class of the package's deliberate, user-facing errors."""
