"""Experiment trackers beside ``metrics.jsonl``: ``train.report_to`` through accelerate's trackers.

``train.report_to: [tensorboard]`` (or ``wandb``, ``mlflow``, ... any accelerate ``LoggerType``; default none)
gives the Accelerator ``log_with`` and a project folder ``<output_dir>/tracking``; the trackers start once the
output folder is ready (:func:`start_trackers`, with the run's flattened config as hyper-parameters) and receive
every record written to ``metrics.jsonl`` (training losses, lr, eval stats) at its step. ``metrics.jsonl`` stays the
source of truth (resume, demo figures); trackers are a view. A tracker whose package is missing is refused before
the run starts, in one line.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from detrdistill.config import Config
from detrdistill.errors import ConfigError

__all__ = ["tracker_kwargs", "start_trackers", "flat_config", "TRACKING_DIR"]

TRACKING_DIR = "tracking"
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "comet_ml": "comet-ml",
             "aim": "aim", "clearml": "clearml", "dvclive": "dvclive", "trackio": "trackio", "swanlab": "swanlab"}


def _check_available(name: str) -> None:
    from accelerate.utils import imports
    check = getattr(imports, f"is_{name}_available", None)
    if check is not None and not check():
        hint = "pip install 'detrdistill[tracking]'" if name == "tensorboard" else f"pip install {_PACKAGES[name]}"
        raise ConfigError(f"train.report_to: {name} is not installed; {hint} (or remove it from train.report_to)")


def tracker_kwargs(cfg: Config) -> dict[str, Any]:
    """Extra ``Accelerator(...)`` keyword arguments for ``cfg.train.report_to`` (empty when none)."""
    names = list(cfg.train.report_to)
    if not names:
        return {}
    from accelerate.utils import ProjectConfiguration
    for name in names:
        if name != "all":
            _check_available(name)
    out = Path(cfg.train.output_dir)
    return {"log_with": names, "project_config": ProjectConfiguration(project_dir=str(out),
                                                                     logging_dir=str(out / TRACKING_DIR))}


def flat_config(cfg: Config) -> dict[str, Any]:
    """``section.key`` -> scalar (lists and other values as text), as trackers' hyper-parameter tables want."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (bool, int, float, str)):
            out[prefix] = value
        else:
            out[prefix] = str(value)
    walk("", cfg.model_dump())
    return out


def start_trackers(cfg: Config, accelerator, task_name: str) -> Callable[[dict], None] | None:
    """Start the trackers (main process; no-op without ``report_to``) as run ``<task_name>-<output folder name>``
    and return the record sink for :class:`~detrdistill.engine.metrics.MetricsLog`, or None."""
    if not cfg.train.report_to:
        return None
    accelerator.init_trackers(f"{task_name}-{Path(cfg.train.output_dir).name}", config=flat_config(cfg))

    def log(record: dict) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                  and not isinstance(v, bool) and math.isfinite(v)}
        if values:
            accelerator.log(values, step=int(record.get("step", 0)))
    return log
