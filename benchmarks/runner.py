"""Running the project's CLI as a benchmark step: one subprocess per training / evaluation, its output appended to
a log file in the run's folder, a failure raised as :class:`BenchmarkError` naming that log."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class BenchmarkError(RuntimeError):
    pass


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "detrdistill.cli", *args]


def run(cmd: list[str], log_file: Path, env: dict | None = None) -> None:
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("a") as f:
        f.write("$ " + shlex.join(cmd) + "\n")
        f.flush()
        res = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    if res.returncode != 0:
        raise BenchmarkError(f"command failed (rc {res.returncode}), see {log_file}: {shlex.join(cmd)}")


def sets(overrides: list[str]) -> list[str]:
    return sum((["--set", o] for o in overrides), [])


def child_env(threads: int | None) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def val_curve(metrics_file: Path) -> list[list[float]]:
    """[[step, AP], ...] from the periodic (val split) evaluations of a run."""
    if not metrics_file.is_file():
        return []
    from detrdistill.engine.metrics import read_metrics
    return [[r["step"], r["eval/AP"]] for r in read_metrics(metrics_file) if r.get("eval/AP") is not None]


def resolve(path: str | Path) -> Path:
    """A path from a results file or the command line: relative ones are relative to the repository."""
    p = Path(path)
    return p if p.is_absolute() else ROOT / p


def params_of(model_dir: Path) -> int:
    from detrdistill.models.build import count_parameters, load_detector
    return count_parameters(load_detector(model_dir)).total
