"""Statistics that decide a comparison between methods over seeds (see benchmarks/distill_report.py).

The gain of a method over the student alone is estimated from the seeds both ran (the same seed gives both the
same initialisation and data order, so the runs are paired): mean of the per-seed differences with a Student-t
95 % interval, ``mean ± t_{0.975, n-1} * sd / sqrt(n)``. An interval that excludes 0 is a gain the seeds support;
one that includes 0 is not decided by them.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from scipy import stats as _st


def cost_clock(runs: list[dict]) -> str:
    """The field a cost comparison between ``runs`` reads: ``train_cpu_seconds`` (CPU time of the training process,
    hardly load-dependent for a one-thread run) when every run recorded it, else ``train_seconds`` (wall time, only
    comparable between runs made under the same load)."""
    return "train_cpu_seconds" if runs and all(r.get("train_cpu_seconds") for r in runs) else "train_seconds"


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


@dataclass(frozen=True)
class Gain:
    """mean gain over ``n`` paired seeds and its two-sided ``level`` interval (None with fewer than 2 seeds)."""
    mean: float
    n: int
    low: float | None
    high: float | None
    level: float = 0.95

    @property
    def decided(self) -> bool:
        """The interval excludes 0."""
        return self.low is not None and (self.low > 0 or self.high < 0)

    def __str__(self) -> str:
        if self.low is None:
            return f"{self.mean:+.2f} (n={self.n}, no interval)"
        return f"{self.mean:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def paired_gain(method: dict[int, float], baseline: dict[int, float], level: float = 0.95) -> Gain | None:
    """``method`` / ``baseline``: seed -> AP. The gain over the seeds both have, with its t-interval."""
    seeds = sorted(set(method) & set(baseline))
    if not seeds:
        return None
    diffs = [method[s] - baseline[s] for s in seeds]
    m = statistics.mean(diffs)
    if len(diffs) < 2:
        return Gain(m, len(diffs), None, None, level)
    half = _st.t.ppf(0.5 + level / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
    return Gain(m, len(diffs), m - half, m + half, level)


def spread(values: list[float], k: float = 2.0) -> tuple[float, float]:
    """``mean ± k * sd`` of committed values: the range a rerun in another environment (which acts like a new
    seed) is expected to fall in."""
    m, sd = mean_sd(values)
    return m - k * sd, m + k * sd
