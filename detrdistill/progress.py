"""Progress bars that suit where the output goes.

On a terminal: a normal tqdm bar. Anywhere else (a log file, CI, a pipe): :class:`PlainProgress`, one plain line
at the start, then at most one every ``interval_s`` seconds (30 by default), and one at the end; a line is never
printed twice, and neither ``set_postfix`` (the trainer's loss) nor ``update`` prints outside that rhythm::

    train demo: 0/1000 (0%)
    train demo: 412/1000 (41%), 0:30 elapsed, 0:43 left, 13.7 it/s, loss=4.125
    train demo: 1000/1000 (100%), 1:13 elapsed, 13.7 it/s, loss=3.502
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any, Iterable

PLAIN_INTERVAL_S = 30.0


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class PlainProgress:
    """The subset of tqdm's interface the package uses (iteration, ``update``, ``set_postfix``, ``total``,
    ``close``, context manager), printing whole lines at a fixed interval for a log file."""

    def __init__(self, iterable: Iterable | None = None, *, total: int | None = None, desc: str = "",
                 initial: int = 0, disable: bool = False, file: IO[str] | None = None,
                 interval_s: float = PLAIN_INTERVAL_S, unit: str = "it", **_ignored: Any):
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)
        self.total, self.desc, self.n, self.initial = total, desc, initial, initial
        self.disable, self.file, self.interval_s, self.unit = disable, file or sys.stderr, interval_s, unit
        self.postfix = ""
        self.start = self.last_print = time.monotonic()
        self.last_line: str | None = None
        self.closed = False
        self._print()

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is updated by hand")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> "PlainProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.total or 0

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        done = self.n - self.initial
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        parts = [f"{self.n}/{self.total} ({100 * self.n / self.total:.0f}%)" if self.total else f"{self.n}"]
        if done > 0:
            parts.append(f"{_clock(elapsed)} elapsed")
            if rate and self.total and self.n < self.total:
                parts.append(f"{_clock((self.total - self.n) / rate)} left")
            if rate:
                parts.append(f"{rate:.2f} {self.unit}/s" if rate >= 1 else f"{1 / rate:.2f} s/{self.unit}")
        text = ", ".join(parts) + (f", {self.postfix}" if self.postfix else "")
        return f"{self.desc}: {text}" if self.desc else text

    def _print(self) -> None:
        if self.disable:
            return
        text = self.line()
        if text != self.last_line:
            self.file.write(text + "\n")
            self.file.flush()
            self.last_line = text
        self.last_print = time.monotonic()

    def update(self, n: int = 1) -> None:
        self.n += n
        if time.monotonic() - self.last_print >= self.interval_s:
            self._print()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Shown on the next line printed (never prints by itself)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:  # tqdm's name; lines come at the interval only
        pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._print()  # the end state, unless it is the line just printed


def progress_bar(iterable: Iterable | None = None, *, file: IO[str] | None = None,
                 interval_s: float = PLAIN_INTERVAL_S, **kwargs):
    """``tqdm(iterable, **kwargs)`` on a terminal; :class:`PlainProgress` (a line every ``interval_s``) otherwise.

    Accepts tqdm's keyword arguments (``total``, ``desc``, ``disable``, ``initial``, ``leave``...).
    """
    stream = file if file is not None else sys.stderr
    if is_terminal(stream):
        from tqdm.auto import tqdm
        return tqdm(iterable, file=stream, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    return PlainProgress(iterable, file=stream, interval_s=interval_s, **kwargs)
