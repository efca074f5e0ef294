"""benchmarks/run_env.py: what a benchmark run records of its environment (commit, versions, device with its
instruction set, CPU flags, threads), which of it two runs must share, and how a device is shown in tables."""
from __future__ import annotations

import pytest

from benchmarks import run_env


def test_environment_names_commit_versions_device_and_threads():
    env = run_env.environment(1)
    assert len(env["commit"]) == 40 and isinstance(env["dirty"], bool)
    for key in ("python", "torch", "transformers", "accelerate", "device"):
        assert env[key], key
    assert env["threads"] == 1
    described = run_env.describe(env)
    assert env["commit"][:7] in described and env["torch"] in described and "1 thread" in described
    other = {**env, "commit": "0" * 40}
    assert run_env.environment_key(other) != run_env.environment_key(env)
    assert run_env.environment_key({**env, "threads": 2}) == run_env.environment_key(env)  # threads: checked apart


def test_a_cpu_record_names_its_instruction_set_and_flags_and_an_older_record_matches_no_new_one(monkeypatch):
    import torch

    from detrdistill import machine

    if torch.cuda.is_available():
        pytest.skip("a GPU's record is its name")
    env = run_env.environment(1)
    assert env["device"].endswith(f" cores, {torch.backends.cpu.get_cpu_capability()}")
    assert env["cpu_flags"] is None or (len(env["cpu_flags"]) == 8 and int(env["cpu_flags"], 16) >= 0)
    older = {k: v for k, v in env.items() if k != "cpu_flags"}  # a record made before the flags were kept
    assert run_env.environment_key(older) != run_env.environment_key(env)
    assert "cpu_flags" in " ".join(run_env.differences(env, older))
    monkeypatch.setattr(machine.Path, "read_text", lambda self, *a, **k: "flags\t: sse avx2 fma\n")
    one = machine.cpu_flags()
    monkeypatch.setattr(machine.Path, "read_text", lambda self, *a, **k: "flags\t: fma avx2 sse\n")
    assert machine.cpu_flags() == one  # the set of flags, not their order
    monkeypatch.setattr(machine.Path, "read_text", lambda self, *a, **k: "flags\t: sse avx2 fma avx512f\n")
    assert machine.cpu_flags() != one


def test_short_device_drops_trademarks_and_filler_words_only():
    assert run_env.short_device("Intel(R) Xeon(R) Processor, 2 cores") == "Intel Xeon, 2 cores"
    assert run_env.short_device("AMD EPYC, 2 cores") == "AMD EPYC, 2 cores"
    assert run_env.short_device("NVIDIA H200") == "NVIDIA H200"
    assert run_env.short_device(None) == "device not recorded"


def test_differences_name_exactly_the_fields_that_differ():
    env = run_env.environment(1)
    assert run_env.differences(env, dict(env)) == []
    moved = {**env, "device": "no real CPU", "threads": 2}
    assert run_env.differences(moved, env) == [f"device: {env['device']} -> no real CPU", "threads: 1 -> 2"]
    assert run_env.differences(env, None)  # a run that recorded nothing differs in everything it would record
