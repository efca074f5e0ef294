"""What machine and libraries a run is made on: training is deterministic for one seed, thread count, set of library
versions and device model, and not across them (an AMD and an Intel CPU give other numbers for the same command).

Used by ``detrdistill demo`` to say whether its figures should equal the README reference's to the digit, and by
``benchmarks/run_env.py``, which records the same with every benchmark run.
"""
from __future__ import annotations

import os
import platform
from pathlib import Path

__all__ = ["cpu_model", "device_name", "library_versions", "differences"]

LIBRARIES = ("torch", "transformers")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name() -> str:
    """The GPU's name, else the CPU model and core count (``Intel(R) Xeon(R) Processor, 2 cores``)."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{cpu_model()}, {os.cpu_count()} cores"


def library_versions() -> dict[str, str]:
    """``{"python": ..., "torch": ..., "transformers": ...}``: the versions a run's numbers depend on."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def differences(here: dict, then: dict) -> list[str]:
    """What differs between two ``{"device": ..., "versions": {...}, "threads": ...}`` records, as ``name: then ->
    here`` (only the fields both record)."""
    out = []
    for key in ("device", "threads"):
        if key in here and key in then and here[key] != then[key]:
            out.append(f"{key}: {then[key]} -> {here[key]}")
    hv, tv = here.get("versions") or {}, then.get("versions") or {}
    for name in sorted(set(hv) & set(tv)):
        if hv[name] != tv[name]:
            out.append(f"{name}: {tv[name]} -> {hv[name]}")
    return out
