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


def test_a_log_file_gets_the_interval_not_a_line_per_postfix_and_never_a_line_twice():
    """The trainer sets the loss as a postfix at every logging step; in a log file that prints nothing by itself:
    a start line, then one per interval, then the end line, each once."""
    out = io.StringIO()
    bar = progress_bar(total=200, desc="train", file=out, interval_s=3600)
    for step in range(200):
        bar.update(1)
        bar.set_postfix(loss=f"{1 / (step + 1):.3f}")
    bar.close()
    bar.close()  # closing twice prints nothing more
    lines = out.getvalue().splitlines()
    assert len(lines) == 2, lines
    assert lines[0] == "train: 0/200 (0%)" and lines[1].startswith("train: 200/200 (100%)")
    assert "loss=0.005" in lines[1]


def test_lines_come_at_the_interval(monkeypatch):
    import detrdistill.progress as progress
    now = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: now[0])
    out = io.StringIO()
    bar = progress_bar(total=100, desc="train", file=out, interval_s=30)
    for _ in range(100):
        now[0] += 1.0  # one second a step: a line every 30 steps
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    assert [ln.split(":")[1].split()[0] for ln in lines] == ["0/100", "30/100", "60/100", "90/100", "100/100"]
    assert "1:10 left" in lines[1] and "1.00 it/s" in lines[1]
    assert len(set(lines)) == len(lines)
