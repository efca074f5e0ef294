"""Fault suite, checkpoints (the other faults: test_faults.py): a damaged newest checkpoint falls back
to an older one, resume past it reaches bit-identical weights (train and distill), old formats load and newer ones
are refused, kill -9 at several points then --resume reaches the same weights, and the run-folder flags.
"""
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from tests.conftest import tiny_overrides
from tests.test_faults import QUICK, _assert_same_weights, _one_line_error, _run, _sets
from tests.test_faults import teacher_dir  # noqa: F401  (module fixture: a tiny teacher)

# slow: trains through the CLI, damages checkpoints, kill -9 of CLI subprocesses
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# ------------------------------------------------------------------------------------ checkpoints
RESUME = ["train.max_steps=6", "train.checkpoint_every_steps=2", "train.keep_checkpoints=3", "model.dropout=0.1",
          "data.hflip=0.5"]


@pytest.fixture(scope="module")
def reference_run(synth_dir, tmp_path_factory):
    """An uninterrupted 6-step run (checkpoints at 2, 4, 6): the weights every resumed run must reach."""
    out = tmp_path_factory.mktemp("f_ref") / "run"
    assert _run("train", out, synth_dir, *RESUME) == 0
    return out


def _rehash(ckpt: Path, name: str) -> None:
    """Record ``name``'s current checksum in state.json (when it lists checksums): only the checks after the
    checksum can catch the damage."""
    import hashlib

    state = json.loads((ckpt / "state.json").read_text())
    if "files" in state:
        state["files"][name] = hashlib.sha256((ckpt / name).read_bytes()).hexdigest()
        (ckpt / "state.json").write_text(json.dumps(state))


def _damage(ckpt: Path, how: str) -> None:
    if how == "missing_rng":
        (ckpt / "rng-0.pt").unlink()
    elif how == "flipped_weights_byte":  # a bit flip in the middle of a tensor: the file still parses
        f = ckpt / "weights.safetensors"
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0x40
        f.write_bytes(bytes(data))
    elif how == "nan_weights":
        from safetensors.torch import load_file, save_file
        w = load_file(str(ckpt / "weights.safetensors"))
        k = next(k for k, v in w.items() if v.is_floating_point())
        w[k] = torch.full_like(w[k], float("nan"))
        save_file(w, str(ckpt / "weights.safetensors"))
        _rehash(ckpt, "weights.safetensors")
    elif how == "wrong_structure_optimizer":
        torch.save({"state": {}, "param_groups": [{"params": [0]}]}, ckpt / "optimizer.pt")
        _rehash(ckpt, "optimizer.pt")
    elif how == "truncated_weights":
        f = ckpt / "weights.safetensors"
        f.write_bytes(f.read_bytes()[:100])
    elif how == "empty_weights":
        (ckpt / "weights.safetensors").write_bytes(b"")
    elif how == "missing_optimizer":
        (ckpt / "optimizer.pt").unlink()
    elif how == "bad_state_json":
        (ckpt / "state.json").write_text('{"step": 4, "epo')
    elif how == "pickled_code":  # a payload that would create a file when unpickled: must not run
        class Payload:
            def __reduce__(self):
                return (open, (str(ckpt / "PWNED"), "w"))
        torch.save({"state": Payload()}, ckpt / "optimizer.pt")


@pytest.mark.parametrize("how", ["truncated_weights", "empty_weights", "missing_optimizer", "bad_state_json",
                                 "pickled_code", "missing_rng", "flipped_weights_byte", "nan_weights",
                                 "wrong_structure_optimizer"])
def test_damaged_newest_checkpoint_falls_back(how, reference_run, synth_dir, tmp_path, caplog):
    from detrdistill.config import load_config
    from detrdistill.engine.checkpoint import load_latest_intact
    from detrdistill.engine.optim import build_optimizer, build_scheduler
    from detrdistill.engine.tasks import DetectionTask

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    _damage(out / "checkpoints" / "step-00000006", how)
    from detrdistill.cli import embedded_config
    cfg = load_config(embedded_config("synthetic"), tiny_overrides(out, synth_dir, *RESUME))  # as the CLI does
    labels = json.loads((out / "model" / "config.json").read_text())["id2label"]
    task = DetectionTask.from_config(cfg, {int(k): v for k, v in labels.items()})
    opt = build_optimizer(task, cfg.optim)
    sched = build_scheduler(opt, 6, cfg.optim)
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        path, state = load_latest_intact(out, task, opt, sched)
    assert path.name == "step-00000004" and state["step"] == 4
    assert "falling back" in caplog.text
    assert (out / "checkpoints" / "step-00000006.damaged").is_dir()  # moved aside: never picked or pruned
    assert not (out / "checkpoints" / "step-00000006.damaged" / "PWNED").exists()


def test_resume_past_damaged_checkpoints_reaches_the_same_weights(reference_run, synth_dir, tmp_path, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    _damage(out / "checkpoints" / "step-00000004", "truncated_weights")
    assert _run("train", out, synth_dir, *RESUME, flags=["--resume"]) == 0  # from step 2
    _assert_same_weights(out, reference_run)
    assert sorted(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r) == list(range(1, 7))
    # every checkpoint damaged: refused in one line
    for c in (out / "checkpoints").glob("step-*[0-9]"):
        _damage(c, "empty_weights")
    assert _run("train", out, synth_dir, *RESUME, flags=["--resume"]) == 2
    assert "no intact checkpoint" in _one_line_error(capsys)


def test_distill_resume_past_a_damaged_checkpoint_reaches_the_same_weights(teacher_dir, synth_dir, tmp_path):
    flags = ["--teacher", str(teacher_dir)]
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert _run("distill", ref, synth_dir, *RESUME, flags=flags) == 0
    shutil.copytree(ref, out)
    _damage(out / "checkpoints" / "step-00000006", "empty_weights")
    shutil.rmtree(out / "model")
    assert _run("distill", out, synth_dir, *RESUME, flags=[*flags, "--resume"]) == 0  # from step 4
    _assert_same_weights(out, ref)


def test_old_format_checkpoint_loads_and_newer_is_refused(reference_run, synth_dir, tmp_path):
    import random

    import numpy as np

    from detrdistill.engine.checkpoint import CheckpointError

    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    shutil.rmtree(out / "checkpoints" / "step-00000006")
    ck = out / "checkpoints" / "step-00000004"
    state = json.loads((ck / "state.json").read_text())
    (ck / "state.json").write_text(json.dumps({k: v for k, v in state.items() if k != "format"}))  # format 1
    new = torch.load(ck / "rng-0.pt", weights_only=True)
    random.seed(0)
    np.random.seed(0)  # format 1 pickled the raw getstate() objects (numpy arrays included)
    torch.save({"python": random.getstate(), "numpy": np.random.get_state(), "torch": new["torch"]}, ck / "rng-0.pt")
    assert _run("train", out, synth_dir, *RESUME, flags=["--resume"]) == 0
    assert sorted(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r) == list(range(1, 7))
    ck2 = out / "checkpoints" / "step-00000006"
    (ck2 / "state.json").write_text(json.dumps({**json.loads((ck2 / "state.json").read_text()), "format": 99}))
    from detrdistill.engine.checkpoint import read_state
    with pytest.raises(CheckpointError, match="newer"):
        read_state(ck2)


KILL_HARNESS = r"""
import json, os, signal, sys
fault, n = sys.argv[1], int(sys.argv[2])
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if fault == "checkpoint_write":   # the n-th weights file is half written, then the process dies
    import detrdistill.engine.checkpoint as ck
    orig, calls = ck.save_file, [0]
    def save_file(tensors, path, *a, **k):
        calls[0] += 1
        orig(tensors, path, *a, **k)
        if calls[0] == n:
            os.truncate(path, os.path.getsize(path) // 2)
            die()
    ck.save_file = save_file
elif fault == "after_publish":     # dies right after checkpoint step n is renamed into place
    import detrdistill.engine.checkpoint as ck
    orig = os.replace
    def replace(src, dst):
        orig(src, dst)
        if str(dst).endswith(f"step-{n:08d}"):
            die()
    ck.os.replace = replace
elif fault == "metrics_line":      # dies in the middle of writing step n's metrics line (a torn line)
    from detrdistill.engine.metrics import MetricsLog
    orig = MetricsLog.write
    def write(self, rec):
        if rec.get("step") == n and "loss" in rec:
            with self.path.open("a") as f:
                f.write(json.dumps(rec)[:20])
            die()
        orig(self, rec)
    MetricsLog.write = write
from detrdistill.cli import main
sys.exit(main(sys.argv[3:]))
"""


@pytest.mark.parametrize("fault,n,resumed_from", [("checkpoint_write", 2, 2), ("after_publish", 4, 4),
                                                  ("metrics_line", 5, 4), ("metrics_line", 1, 0)])
def test_kill_9_then_resume_reaches_the_same_weights(fault, n, resumed_from, reference_run, synth_dir, tmp_path):
    out = tmp_path / "run"
    args = ["train", *_sets(tiny_overrides(out, synth_dir, *QUICK, *RESUME))]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    res = subprocess.run([sys.executable, "-c", KILL_HARNESS, fault, str(n), *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert not (out / "model" / "model.safetensors").exists()
    assert main([*args, "--resume"]) == 0
    _assert_same_weights(out, reference_run)
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 7)), steps  # nothing lost, nothing doubled, the torn line gone
    if resumed_from:
        assert (out / "checkpoints" / f"step-{resumed_from:08d}").is_dir()


def test_run_dir_flags_and_modes(synth_dir, tmp_path, caplog):
    from detrdistill.config import load_config
    from detrdistill.distillation.task import DistillTask
    from detrdistill.engine.run_dir import RunDirError, claim_run_dir, commit_run_dir
    from detrdistill.engine.tasks import DetectionTask

    out = tmp_path / "run"
    cfg = load_config(None, tiny_overrides(out, synth_dir))
    with pytest.raises(RunDirError, match="exclude each other"):
        claim_run_dir(cfg, DetectionTask, resume=True, overwrite=True)
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        resume, replace, lock = claim_run_dir(cfg, DetectionTask, resume=True)
    assert (resume, replace) == (False, False)  # nothing to resume: a new run, said once
    assert "no run in" in caplog.text and not (out / "run.json").exists()  # the checks write nothing
    commit_run_dir(cfg, DetectionTask, replace)
    lock.release()
    assert json.loads((out / "run.json").read_text()) == {"mode": "train"}
    (out / "metrics.jsonl").write_text('{"step": 1}\n')  # now it holds a train run
    with pytest.raises(RunDirError, match="holds a `train` run"):
        claim_run_dir(cfg, DistillTask, resume=True)
    resume, replace, lock = claim_run_dir(cfg, DetectionTask, resume=True)
    lock.release()
    assert resume is True and replace is False


def test_resume_check_reads_the_saved_config_through_todays_schema(tmp_path):
    """A run saved before a schema change (a retired key, a key added since with its default) still resumes;
    a real change is still named."""
    import yaml

    from detrdistill.config import load_config
    from detrdistill.engine.run_dir import RunDirError, check_resume
    from detrdistill.engine.tasks import DetectionTask

    cfg = load_config(
        Path(__file__).parents[1] / "detrdistill" / "configs" / "synthetic.yaml", [f"train.output_dir={tmp_path}"])
    saved = cfg.model_dump(mode="json")
    saved["loss"]["criterion"] = "ours"          # retired key, still accepted by the loader
    saved["distill"].pop("teacher_matcher")      # added since, default value
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    check_resume(tmp_path, cfg, DetectionTask)         # no error
    changed = load_config(Path(__file__).parents[1] / "detrdistill" / "configs" / "synthetic.yaml",
                          [f"train.output_dir={tmp_path}", "model.d_model=32"])
    with pytest.raises(RunDirError, match="model.d_model"):
        check_resume(tmp_path, changed, DetectionTask)


# ------------------------------------------------------------------------------------ inputs changed, NaN
def test_resume_refuses_a_changed_teacher_or_training_data(teacher_dir, synth_dir, tmp_path, capsys):
    teacher = tmp_path / "teacher"
    shutil.copytree(teacher_dir, teacher)
    data = tmp_path / "data"
    shutil.copytree(synth_dir, data)
    sets = [f"data.synth_dir={data}", "train.max_steps=4", "train.checkpoint_every_steps=2"]
    out = tmp_path / "run"
    args = ["distill", *_sets(tiny_overrides(out, synth_dir, *QUICK, *sets)), "--teacher", str(teacher)]
    assert main(args) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    # the teacher folder replaced in place by another model (same path, so the config check passes)
    other = tmp_path / "other"
    assert _run("train", other, synth_dir, "model.d_model=64", "model.decoder_layers=3", "model.num_queries=15",
                "train.seed=7") == 0
    shutil.rmtree(teacher)
    shutil.copytree(other / "model", teacher)
    assert main([*args, "--resume"]) == 2
    line = _one_line_error(capsys)
    assert "the teacher (its config, weights" in line and "changed since this checkpoint was written" in line
    shutil.rmtree(teacher)
    shutil.copytree(teacher_dir, teacher)  # back as it was: resumes
    # the training listing edited in place (one box moved)
    doc = json.loads((data / "train.json").read_text())
    doc["annotations"][0]["bbox"][0] += 1
    (data / "train.json").write_text(json.dumps(doc))
    assert main([*args, "--resume"]) == 2
    assert "the training data (data.train" in _one_line_error(capsys)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before  # refused before any write


def test_non_finite_weights_are_never_checkpointed(synth_dir, tmp_path, capsys, monkeypatch):
    from detrdistill.engine import trainer

    real = trainer.build_optimizer

    def diverging(task, cfg):  # after the second step one weight is NaN, while that step's loss was finite
        opt, calls = real(task, cfg), {"n": 0}

        def nan_after_second_step(optimizer, args, kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                with torch.no_grad():
                    optimizer.param_groups[-1]["params"][0].fill_(float("nan"))
        opt.register_step_post_hook(nan_after_second_step)
        return opt
    monkeypatch.setattr(trainer, "build_optimizer", diverging)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir, "train.max_steps=4", "train.checkpoint_every_steps=1") == 2
    line = _one_line_error(capsys)
    assert "step 2:" in line and "NaN or inf" in line and "checkpoint not written" in line
    assert "intact" not in line
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]  # the finite one only
