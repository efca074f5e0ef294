"""JSON-lines metrics log: ``<output_dir>/metrics.jsonl``, one object per logging step.

Training lines hold ``step``, ``epoch``, ``lr``, ``loss`` and every component as ``loss/<name>``;
evaluation lines hold ``step``, ``epoch`` and ``eval/<stat>``. Lines are flushed as written, so a
crash loses nothing already logged; on resume, lines past the checkpoint's step are dropped first, and
a torn last line (a crash in the middle of a write) is dropped with a warning. Any other line that is
not JSON is a :class:`MetricsError` naming the file and line.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Callable

from detrdistill.errors import DetrDistillError
from detrdistill.io_atomic import write_atomic, write_guard

log = logging.getLogger("detrdistill")


def mean_over_processes(accelerator, named: dict) -> dict[str, float]:
    """``{name: scalar tensor}`` -> ``{name: mean over processes}``, one collective. The processes may hold
    different names (a family's denoising losses exist only on a process whose batch has boxes): the names are
    agreed first (one object gather, only with several processes), a name a process lacks counts 0 there."""
    import torch

    names = list(named)
    if accelerator.num_processes > 1:
        from accelerate.utils import gather_object

        names = sorted(set().union(*gather_object([names])))
    if not names:
        return {}
    device = next(iter(named.values())).device if named else accelerator.device
    values = torch.stack([named[k].detach().float().reshape(()) if k in named else
                          torch.zeros((), device=device) for k in names])
    return dict(zip(names, accelerator.reduce(values, "mean").tolist()))


class MetricsError(DetrDistillError):
    """metrics.jsonl holds a line that is not JSON (other than a torn last line)."""


def _parse_lines(path: Path, repair_last: bool) -> list[dict]:
    lines = [(i, ln) for i, ln in enumerate(path.read_text(errors="replace").splitlines(), 1) if ln.strip()]
    out = []
    for k, (lineno, ln) in enumerate(lines):
        try:
            rec = json.loads(ln)
            if not isinstance(rec, dict):
                raise ValueError("not an object")
        except ValueError:
            if repair_last and k == len(lines) - 1:
                log.warning("%s: line %d is torn (a crash while writing it); dropped", path, lineno)
                continue
            raise MetricsError(f"{path}: line {lineno} is not a JSON object; delete that line (or the file) "
                               "and rerun") from None
        out.append(rec)
    return out


class MetricsLog:
    """``on_write``: also called with every record written (e.g. the experiment trackers, see
    :mod:`detrdistill.engine.tracking`)."""

    def __init__(self, path: str | Path, enabled: bool = True, on_write: Callable[[dict], None] | None = None):
        self.path, self.enabled, self.on_write = Path(path), enabled, on_write

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they will be logged again by the resumed run) and a torn last line."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = [r for r in _parse_lines(self.path, repair_last=True) if r.get("step", 0) <= step]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        line = json.dumps(clean) + "\n"
        with write_guard(self.path.parent, self.path.name, need=len(line)):  # a torn line is dropped on --resume
            with self.path.open("a") as f:
                f.write(line)
                f.flush()
        if self.on_write is not None:
            self.on_write(record)


def read_metrics(path: str | Path) -> list[dict]:
    """Every record of a metrics file; a torn last line (run still writing, or killed) is left out."""
    return _parse_lines(Path(path), repair_last=True)
