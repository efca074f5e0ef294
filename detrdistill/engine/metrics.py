"""JSON-lines metrics log: ``<output_dir>/metrics.jsonl``, one object per logging step.

Training lines hold ``step``, ``epoch``, ``lr``, ``loss`` and every component as ``loss/<name>``;
evaluation lines hold ``step``, ``epoch`` and ``eval/<stat>``. Lines are flushed as written, so a
crash loses nothing already logged; on resume, lines past the checkpoint's step are dropped first.
"""
from __future__ import annotations

import json
import math
from pathlib import Path


class MetricsLog:
    def __init__(self, path: str | Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def truncate_after(self, step: int) -> None:
        """Drop lines logged after ``step`` (they will be logged again by the resumed run)."""
        if not (self.enabled and self.path.is_file()):
            return
        keep = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(ln + "\n" for ln in keep))
        tmp.replace(self.path)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
