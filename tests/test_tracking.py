"""train.report_to: accelerate's trackers beside metrics.jsonl (TensorBoard when installed)."""
from __future__ import annotations

import pytest

from detrdistill.config import load_config
from detrdistill.engine.metrics import read_metrics

from .conftest import tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_report_to_parses_none_and_names(tmp_path):
    assert load_config(None, [f"train.output_dir={tmp_path}"]).train.report_to == []
    assert load_config(None, ["train.report_to=none"]).train.report_to == []
    assert load_config(None, ["train.report_to=tensorboard"]).train.report_to == ["tensorboard"]
    with pytest.raises(Exception, match="report_to"):
        load_config(None, ["train.report_to=nosuchtracker"])


@pytest.mark.slow  # a training run
def test_tensorboard_events_hold_the_logged_losses(synth_dir, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from detrdistill.engine.tasks import DetectionTask
    from detrdistill.engine.trainer import run_training
    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(out, synth_dir, "train.max_steps=3", "train.eval_every_epochs=0",
                                           "train.report_to=tensorboard"))
    run_training(cfg, DetectionTask)
    events = sorted((out / "tracking").rglob("events.out.tfevents.*"))
    assert events, "no TensorBoard event file"
    logged = {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}
    got = {}
    for f in events:
        acc = EventAccumulator(str(f))
        acc.Reload()
        if "loss" in acc.Tags().get("scalars", []):
            got.update({e.step: e.value for e in acc.Scalars("loss")})
    assert sorted(got) == sorted(logged) == [1, 2, 3]
    for step, value in logged.items():
        assert got[step] == pytest.approx(value, rel=1e-6)


def test_missing_tracker_package_is_one_line(tmp_path, monkeypatch):
    from accelerate.utils import imports

    from detrdistill.engine.tracking import tracker_kwargs
    from detrdistill.errors import ConfigError
    monkeypatch.setattr(imports, "is_tensorboard_available", lambda: False)
    cfg = load_config(None, [f"train.output_dir={tmp_path}", "train.report_to=tensorboard"])
    with pytest.raises(ConfigError, match="tensorboard is not installed") as e:
        tracker_kwargs(cfg)
    assert "\n" not in str(e.value)
