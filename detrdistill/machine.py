"""What machine and libraries a run is made on: training is deterministic for one seed, thread count, set of library
versions and device model, and not across them (an AMD and an Intel CPU give other numbers for the same command).

Used by ``detrdistill demo`` to say whether its figures should equal the README reference's to the digit, and by
``benchmarks/run_env.py``, which records the same with every benchmark run.
"""
from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
from pathlib import Path

__all__ = ["cpu_model", "cpu_isa", "cpu_flags", "device_name", "library_versions", "code_version", "differences"]

#: the checkout this package runs from, when it runs from one (an installed wheel has no git history)
SOURCE_ROOT = Path(__file__).resolve().parents[1]

LIBRARIES = ("torch", "transformers")


def _cpuinfo(*keys: str) -> str | None:
    """The value of the first ``/proc/cpuinfo`` line that starts with one of ``keys``; None where there is none."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(keys):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    return _cpuinfo("model name") or platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector instruction set torch's CPU kernels use here (``torch.backends.cpu.get_cpu_capability()``: e.g.
    ``AVX512``, ``AVX2``; ``ATEN_CPU_CAPABILITY`` may lower it). Two CPUs of one model name can differ in it, and
    so do their numbers: the same commit, versions, thread count and seed trained to other weights on an "AMD EPYC"
    with AVX512 than on the "AMD EPYC" of the earlier benchmark files (docs/results.md)."""
    import torch

    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except (AttributeError, RuntimeError):  # an old torch
        return "ISA unknown"


def cpu_flags() -> str | None:
    """A short hash of the CPU's feature flags (``/proc/cpuinfo``), None where they cannot be read: the libraries
    torch calls (oneDNN, MKL) choose their kernels by them, so two machines of one model name and
    :func:`cpu_isa` may still differ here, and then in their numbers."""
    flags = _cpuinfo("flags", "Features")
    return None if flags is None else hashlib.sha256(" ".join(sorted(flags.split())).encode()).hexdigest()[:8]


def device_name() -> str:
    """The GPU's name, else the CPU model, core count and vector instruction set (``Intel(R) Xeon(R) Processor,
    2 cores, AVX512``; records made before 2026-12-08 lack the last part)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {os.cpu_count()} cores, {cpu_isa()}"


def library_versions(names: tuple[str, ...] = LIBRARIES) -> dict[str, str | None]:
    """``{"python": ..., "torch": ..., "transformers": ...}``: the versions a run's numbers depend on (``names``: the
    packages; None for one not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=SOURCE_ROOT, capture_output=True, text=True, check=True,
                              timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


@functools.lru_cache(maxsize=1)
def code_version() -> dict:
    """``{"commit": sha or "unknown", "dirty": bool, "diff_sha": sha of the uncommitted diff or None}`` of the checkout
    the package runs from ("unknown" for an installed package outside one).

    Dirty = a tracked file differs from the commit (untracked files do not count: run folders, results; nor do the
    committed benchmark results, which a run may be writing)."""
    # only this project's own checkout: an installed package inside another repository (a venv in a user's project)
    # must not report that repository's commit
    top = _git("rev-parse", "--show-toplevel")
    ours = bool(top) and Path(top).resolve() == SOURCE_ROOT
    commit = (_git("rev-parse", "HEAD") or "unknown") if ours else "unknown"
    diff = _git("diff", "HEAD", "--", ".", ":(exclude)benchmarks/results") if commit != "unknown" else ""
    return {"commit": commit, "dirty": bool(diff),
            "diff_sha": hashlib.sha256(diff.encode()).hexdigest()[:12] if diff else None}


def differences(here: dict, then: dict) -> list[str]:
    """What differs between two demo records (``{"code": {...}, "device": ..., "versions": {...}, "threads": ...}``: a
    demo's summary, its README reference), as ``name: then -> here`` (only the fields both record). Benchmark runs
    keep a flat record; ``benchmarks/run_env.differences`` compares those."""
    out = []
    hc, tc = (here.get("code") or {}).get("commit"), (then.get("code") or {}).get("commit")
    if hc and tc and hc != tc:
        out.append(f"commit: {tc[:7]} -> {hc[:7]}")
    for key in ("device", "cpu_flags", "threads"):
        if key in here and key in then and here[key] != then[key]:
            out.append(f"{key}: {then[key]} -> {here[key]}")
    hv, tv = here.get("versions") or {}, then.get("versions") or {}
    for name in sorted(set(hv) & set(tv)):
        if hv[name] != tv[name]:
            out.append(f"{name}: {tv[name]} -> {hv[name]}")
    return out
