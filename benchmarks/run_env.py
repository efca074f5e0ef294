"""What a benchmark run was made with: the code (git commit, dirty or not), the library versions, the machine and
the thread count, and a hash of the resolved config (see benchmarks/distill.py).

Training here is deterministic for one code version, environment and thread count (a retrained teacher matches
its record to the last digit on the machine that made it), and not across them. So a comparison is made on one
:func:`environment_key`, and ``--verify`` calls a rerun "identical" only when that key and the thread count match
(:func:`differences` names what does not).
"""
from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

from detrdistill.machine import code_version, cpu_flags, device_name, library_versions

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("torch", "transformers", "accelerate", "numpy", "scipy", "pycocotools")
# what must agree for two runs to be "the same environment" (the date, the dirty diff's content do not count)
# (cpu_flags: a hash of the CPU's feature flags, recorded from 2026-12-08: two "AMD EPYC, 2 cores" machines trained the
# same commit, versions, threads and seed to other numbers; a record without it matches no new one)
ENV_KEYS = ("commit", "dirty", "python", "torch", "transformers", "accelerate", "device", "cpu_flags")


def short_device(name: str | None) -> str:
    """A device name without trademark marks and filler words: ``Intel(R) Xeon(R) Processor, 2 cores`` ->
    ``Intel Xeon, 2 cores`` (for tables; the full name stays in the run's record)."""
    if not name:
        return "device not recorded"
    for mark in ("(R)", "(TM)", "(tm)", " Processor", " CPU"):
        name = name.replace(mark, "")
    return " ".join(name.split()).replace(" ,", ",")


@functools.lru_cache(maxsize=1)
def versions() -> dict:
    """python and every package of :data:`PACKAGES` (None: not installed)."""
    return library_versions(PACKAGES)


def environment(threads: int | None) -> dict:
    """The record stored with every run: code version, versions, device, threads."""
    return {**code_version(), **versions(), "device": device_name(), "cpu_flags": cpu_flags(), "threads": threads}


def environment_key(env: dict | None) -> tuple:
    """What must match for a comparison (and for an "identical" rerun): commit, dirty flag, versions, device."""
    env = env or {}
    return tuple(env.get(k) for k in ENV_KEYS)


def differences(here: dict | None, then: dict | None, keys: tuple[str, ...] = (*ENV_KEYS, "threads")) -> list[str]:
    """The ``keys`` of two run records that differ, as ``name: then -> here`` (default: the environment key and the
    thread count, what an "identical" rerun needs)."""
    here, then = here or {}, then or {}
    return [f"{k}: {then.get(k)} -> {here.get(k)}" for k in keys if here.get(k) != then.get(k)]


def describe(env: dict | None) -> str:
    """One line: ``commit 1a2b3c4 (dirty), python 3.11.7, torch 2.13.0, ..., <device>, 1 thread(s)``."""
    if not env:
        return "not recorded"
    commit = (env.get("commit") or "unknown")[:7] + (" (dirty)" if env.get("dirty") else "")
    libs = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "transformers", "accelerate") if env.get(k))
    return f"commit {commit}, {libs}, {env.get('device')}, {env.get('threads') or 'default'} thread(s)"


def config_hash(config_yaml: Path) -> str | None:
    """sha256 (12 hex digits) of a run's resolved config (its ``config.yaml``) without the output folder, which
    differs per run and changes nothing the run computes."""
    import yaml

    if not config_yaml.is_file():
        return None
    cfg = yaml.safe_load(config_yaml.read_text()) or {}
    cfg.get("train", {}).pop("output_dir", None)
    return hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:12]


def relative(path: str | Path) -> str:
    """``path`` relative to the repository when inside it (what a results file records), also when it lies under
    a link in the repository to a folder elsewhere (a teacher shared between work trees)."""
    for p in (Path(path).absolute(), Path(path).resolve()):
        try:
            return str(p.relative_to(ROOT))
        except ValueError:
            pass
    return str(path)


def portable_command(argv: list[str]) -> list[str]:
    """``argv`` with paths inside the repository written relative to it (a results file names no folder of the
    machine that made it); the interpreter is written ``python``."""
    out = []
    for a in argv:
        key, eq, value = a.partition("=") if a.startswith("--") and "=" in a else ("", "", a)
        out.append(f"{key}{eq}{relative(value) if Path(value).is_absolute() else value}")
    return out
