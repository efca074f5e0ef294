"""Progress bars: plain periodic lines when the output is not a terminal."""
from __future__ import annotations

import io

from detrdistill.progress import progress_bar


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_not_a_terminal_prints_whole_lines_without_carriage_returns():
    out = io.StringIO()
    for _ in progress_bar(range(500), desc="eval", file=out, interval_s=3600):
        pass
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert 1 <= len(lines) <= 3  # start and end only: the interval was never reached
    assert "eval" in lines[-1] and "500/500" in lines[-1]


def test_manual_bar_updates_and_postfix_reach_the_last_line():
    out = io.StringIO()
    bar = progress_bar(total=10, desc="train", file=out, interval_s=0)
    for _ in range(10):
        bar.update(1)
        bar.set_postfix(loss="1.234")
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) > 3 and "\r" not in out.getvalue()  # interval 0: a line per refresh
    assert "10/10" in lines[-1] and "loss=1.234" in lines[-1]


def test_terminal_keeps_tqdm_carriage_returns():
    out = _Tty()
    for _ in progress_bar(range(50), desc="eval", file=out, mininterval=0):
        pass
    assert "\r" in out.getvalue()
