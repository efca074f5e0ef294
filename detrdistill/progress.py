"""Progress bars that suit where the output goes.

On a terminal: a normal tqdm bar. Anywhere else (a log file, CI, a pipe): the same bar printed as a
plain line every ``interval_s`` seconds (and at the start and the end) instead of thousands of
carriage-return updates.
"""
from __future__ import annotations

import sys
from typing import IO, Iterable

PLAIN_INTERVAL_S = 30.0


class _LineWriter:
    """A stream wrapper that turns tqdm's carriage-return refreshes into whole lines."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> None:
        line = text.replace("\r", "").replace("\x1b[A", "").strip()
        if line:
            self.stream.write(line + "\n")

    def flush(self) -> None:
        self.stream.flush()


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, *, file: IO[str] | None = None,
                 interval_s: float = PLAIN_INTERVAL_S, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; periodic plain lines (every ``interval_s``) otherwise.

    Accepts tqdm's keyword arguments (``total``, ``desc``, ``disable``, ``initial``, ``leave``...).
    """
    from tqdm.auto import tqdm

    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.update(mininterval=interval_s, maxinterval=interval_s, ncols=100)
    from tqdm import tqdm as plain_tqdm  # tqdm.auto may pick the notebook widget; lines need the text bar

    return plain_tqdm(iterable, file=_LineWriter(stream), **kwargs)
