"""A light section timer for profiling one training step; a no-op unless enabled.

    from detrdistill import profiling
    with profiling.section("teacher_forward"):     # costs one global lookup when profiling is off
        ...
    with profiling.enabled() as prof:              # benchmarks only
        step()
    prof.seconds  # {"teacher_forward": 0.012, ...}: wall seconds summed per section name

When enabled, each section is closed by ``torch.cuda.synchronize()`` on a CUDA machine (so the GPU work launched
inside it is counted in it, at the price of the syncs). Nested sections are timed independently (an outer section
includes its inner ones). Not thread-safe: profile one step at a time from one thread.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Iterator

import torch

__all__ = ["Profile", "section", "enabled", "active"]


class Profile:
    """Accumulated wall seconds per section name (``seconds``) and how often each ran (``calls``)."""

    def __init__(self, sync_cuda: bool | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.sync_cuda = torch.cuda.is_available() if sync_cuda is None else sync_cuda

    def _sync(self) -> None:
        if self.sync_cuda:
            torch.cuda.synchronize()

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] += seconds
        self.calls[name] += 1


_active: Profile | None = None


def active() -> Profile | None:
    """The profile being recorded, or None."""
    return _active


@contextlib.contextmanager
def _timed(prof: Profile, name: str) -> Iterator[None]:
    prof._sync()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        prof._sync()
        prof.add(name, time.perf_counter() - t0)


_NULL = contextlib.nullcontext()


def section(name: str):
    """Context manager timing ``name`` into the active profile; a shared null context when none is active."""
    prof = _active
    return _NULL if prof is None else _timed(prof, name)


@contextlib.contextmanager
def enabled(sync_cuda: bool | None = None) -> Iterator[Profile]:
    """Record every :func:`section` run inside this block into a fresh :class:`Profile` (yielded)."""
    global _active
    previous, _active = _active, Profile(sync_cuda)
    try:
        yield _active
    finally:
        _active = previous
