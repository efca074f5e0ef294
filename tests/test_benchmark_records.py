"""The timing benchmarks (speed, data pipeline, ONNX latency) record the environment they ran in, as the
distillation benchmark's runs do, and their reports show it (an older record without one says so)."""
import pytest

from benchmarks import data_speed, run_env, speed

onnx_latency = pytest.importorskip("benchmarks.onnx_latency")


def _env():
    env = run_env.environment(1)
    assert env["device"] and "torch" in env and "commit" in env  # what describe() renders
    return env


def test_speed_and_data_reports_show_the_environment_or_that_it_was_not_recorded():
    env = _env()
    res = {"device": "cpu", "date": "2026-12-06", "torch": "2.13", "command": "c", "models": [], "distill": [],
           "configs": [], "environment": env}
    for render in (speed.markdown, data_speed.markdown):
        assert f"environment: {run_env.describe(env)}" in render(res)
        assert "environment: not recorded" in render({k: v for k, v in res.items() if k != "environment"})


def test_onnx_latency_report_shows_the_environment(tmp_path):
    env = _env()
    res = {"command": "c", "date": "2026-12-06", "device": "cpu", "threads": 1, "runs": 3, "warmup": 1,
           "models": [], "environment": env}
    out = tmp_path / "lat.md"
    onnx_latency.write_markdown(res, out)
    assert f"environment: {run_env.describe(env)}" in out.read_text()
