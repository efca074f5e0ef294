"""A benchmark results file that several invocations may fill at once (see benchmarks/distill.py).

Two ``distill.py`` processes with the same ``--out`` (two chunks on the cores of one machine, or on machines
sharing a folder) must not lose each other's runs, and must not train the same (method, seed) in the same run
folder. Both are done with advisory file locks (``fcntl.flock``; POSIX):

* ``locked(out)``: held while the JSON is read, merged and rewritten, so a save never overwrites a run another
  invocation saved since this one read the file (``merge``);
* ``claim(run_dir)``: taken, without waiting, for the whole training of one run; an invocation that finds it
  held skips that run (another process is training it) and goes on with the next. The teacher's folder and its
  evaluation folder are claimed with ``wait=True``: a second invocation waits for the teacher the first one trains
  or evaluates, then uses its result.

Where ``fcntl`` does not exist (Windows) both locks are no-ops: run one invocation per results file there.
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None


@contextmanager
def _flock(lock_file: Path, wait: bool) -> Iterator[bool]:
    """Yield True while holding an exclusive lock on ``lock_file``; False (nothing held) if ``wait`` is False and
    another process holds it."""
    if fcntl is None:  # pragma: no cover - Windows
        yield True
        return
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def locked(out: Path):
    """Exclusive access to the results file ``out`` (waits for another invocation's save to finish)."""
    return _flock(out.with_name(out.name + ".lock"), wait=True)


def claim(run_dir: Path, wait: bool = False):
    """Take one run's folder for training. ``wait=False``: yields False at once if another process trains it;
    ``wait=True`` (the teacher, which every other run needs, and its evaluation folder): waits until that process
    is done."""
    return _flock(run_dir / ".benchmark.lock", wait=wait)


def read(out: Path) -> dict | None:
    return json.loads(out.read_text()) if out.is_file() else None


def ap_by_seed(results: dict, method: str) -> dict[int, float]:
    """seed -> AP of the file's runs of ``method``."""
    return {r["seed"]: r["AP"] for r in results["runs"] if r["method"] == method}


FULL_METHOD = "detrdistill"


def full_method_arms(methods) -> list[str]:
    """The full method and its variants among ``methods`` (``detrdistill`` and the ``detrdistill_*`` of
    benchmarks/distill.py, e.g. ``detrdistill_quality_warmup``; not ``detrdistill@...``, other teachers), sorted."""
    return sorted({m for m in methods if m == FULL_METHOD or m.startswith(FULL_METHOD + "_")})


def full_method(results: dict) -> str:
    """The file's DETRDistill arm: ``detrdistill`` when it has such runs, else its one variant of the full method
    (``full_method_arms``); ``detrdistill`` too when there is none, or several variants and no plain one (which of
    them is the arm is not clear: the caller finds no runs)."""
    arms = full_method_arms(r["method"] for r in results["runs"])
    return arms[0] if len(arms) == 1 else FULL_METHOD


def family(results: dict, role: str = "student") -> str:
    """The detector family of the file's ``role`` (``student`` / ``teacher``): ``model.family`` of the config it
    records (the config's default family when it names none), else, without the file, the config's name."""
    import yaml

    from detrdistill.config import ModelConfig

    root = Path(__file__).resolve().parents[1]
    config = Path((results.get(role) or {}).get("config") or "?")
    path = config if config.is_absolute() else root / config
    if path.is_file():
        found = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("family")
        return found or ModelConfig.model_fields["family"].default
    return config.stem


def run_key(run: dict) -> tuple[str, int]:
    return run["method"], run["seed"]


def merge(on_disk: dict | None, mine: dict, new_runs: list[dict]) -> dict:
    """The file's content after this invocation saves.

    ``on_disk``: what the file holds now (None if it does not exist); ``mine``: this invocation's header (dataset,
    device, teacher, ...; its ``runs`` are ignored); ``new_runs``: runs this invocation finished. The runs on disk
    are kept in their order and the new ones appended unless the file already has their (method, seed). Header
    fields come from ``mine``, except that ``dates``, ``student`` and ``teachers`` are unions and ``command`` the
    joined history of both (this invocation's command joins it only once it adds a run, or when the file has none).
    """
    disk = on_disk or {}
    runs = list(disk.get("runs", []))
    have = {run_key(r) for r in runs}
    for r in new_runs:
        if run_key(r) not in have:
            runs.append(r)
            have.add(run_key(r))
    added = len(runs) > len(disk.get("runs", []))
    merged = {**disk, **{k: v for k, v in mine.items() if k != "runs"}, "runs": runs}
    old_dates = disk.get("dates", [disk["date"]] if "date" in disk else [])  # files before "dates" had one "date"
    merged["dates"] = sorted(set(old_dates) | set(mine.get("dates", [])))
    merged["student"] = {**disk.get("student", {}), **mine.get("student", {})}
    # teacher variants recorded by another invocation since this one read the file stay recorded
    merged["teachers"] = {**disk.get("teachers", {}), **mine.get("teachers", {})}
    # an invocation that adds no run (everything done or being trained elsewhere) leaves the history as it is
    merged["command"] = (join_commands(disk.get("command"), mine.get("command")) if added or not disk.get("command")
                         else disk["command"])
    if disk.get("teacher") and not mine.get("teacher"):  # a baseline-only chunk knows no teacher
        merged["teacher"] = disk["teacher"]
    return merged


def join_commands(previous: str | None, this: str | None) -> str:
    """Every invocation that added runs to a file, joined by ' && ', each once, in order."""
    parts = previous.split(" && ") if previous else []
    for c in (this.split(" && ") if this else []):
        if c not in parts:
            parts.append(c)
    return " && ".join(parts)


def write_atomic(out: Path, content: dict | str | bytes) -> None:
    """Write ``content`` (a dict as JSON, text, or bytes such as a PNG) to ``out`` through a temporary file and a
    rename, so that a reader or a crash never sees it half-written (the package's
    :func:`detrdistill.io_atomic.write_atomic`)."""
    from detrdistill.io_atomic import write_atomic as write_file_atomic
    write_file_atomic(out, json.dumps(content, indent=1) if isinstance(content, dict) else content)
