"""`detrdistill distill` end to end on the synthetic set: every term on and logged, stop (SIGTERM) and
--resume reproducing the uninterrupted run, export scored by `detrdistill eval`, clear errors on bad
teacher/dataset combinations."""
import json
import logging
import signal
import subprocess
import sys
import time

import pytest

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from tests.conftest import tiny_overrides

ALL_TERMS = ["distill.contrastive.enabled=true", "distill.fitnet.enabled=true", "distill.logit_kd.enabled=true"]
TEACHER = ["model.d_model=64", "model.decoder_layers=3", "model.num_queries=15", "train.eval_every_epochs=0"]


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="module")
def teacher_dir(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher")
    assert main(["train", *_sets(tiny_overrides(out, synth_dir, *TEACHER, "train.max_steps=3"))]) == 0
    return out / "model"


@pytest.mark.parametrize("family", ["deformable_detr", "d_fine"])
def test_distill_with_every_term_off_trains_exactly_as_train(synth_dir, teacher_dir, tmp_path, family):
    """The distill path itself (teacher forward, the family recipe through the distiller) leaves the student's
    training unchanged: what a distilled run gains or loses comes from its terms."""
    common = ["train.max_steps=4", "train.eval_every_epochs=0", f"model.family={family}", "model.dropout=0.1"]
    off = ["distill.logits.enabled=false", "distill.feature.enabled=false", "distill.query_prior.enabled=false"]
    assert main(["train", *_sets(tiny_overrides(tmp_path / "train", synth_dir, *common))]) == 0
    assert main(["distill", "--teacher", str(teacher_dir),
                 *_sets(tiny_overrides(tmp_path / "distill", synth_dir, *common, *off))]) == 0
    train = [r for r in read_metrics(tmp_path / "train" / "metrics.jsonl") if "loss" in r]
    distill = [r for r in read_metrics(tmp_path / "distill" / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in train] == [r["step"] for r in distill] == [1, 2, 3, 4]
    for a, b in zip(train, distill):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-6, abs=1e-7), a["step"]
    assert train[0]["loss"] != train[-1]["loss"]  # it trained


def test_the_distillation_warmup_follows_the_engine_step_across_a_resume(synth_dir, teacher_dir, tmp_path,
                                                                         monkeypatch):
    from detrdistill.distillation.task import DistillTask
    seen, scales = [], []
    set_step = DistillTask.set_step

    def record(self, step, total=None):
        set_step(self, step, total)
        seen.append(step)
        scales.append(self.distiller.term_scale())

    monkeypatch.setattr(DistillTask, "set_step", record)
    common = ["train.eval_every_epochs=0", "train.checkpoint_every_steps=1", "distill.warmup_steps=4"]
    run = tmp_path / "run"
    assert main(["distill", "--teacher", str(teacher_dir),
                 *_sets(tiny_overrides(run, synth_dir, *common, "train.max_steps=2"))]) == 0
    assert seen == [0, 1] and scales == [0.25, 0.5]
    seen.clear(), scales.clear()
    assert main(["distill", "--teacher", str(teacher_dir), "--resume",
                 *_sets(tiny_overrides(run, synth_dir, *common, "train.max_steps=5"))]) == 0
    assert seen == [2, 3, 4] and scales == [0.75, 1.0, 1.0]  # continues from the checkpoint, not from 0


def test_stop_at_ends_distillation_and_the_teacher_forwards_at_its_step(synth_dir, teacher_dir, tmp_path,
                                                                          monkeypatch, caplog):
    """``distill.stop_at=0.5`` of a 4-step run: steps 1-2 distil (their logs have the terms), steps 3-4 are the
    student's alone (no term logged, no teacher forward); the run's length reaches the distiller from the engine."""
    from detrdistill.distillation.distiller import Distiller
    forwards = []
    teacher_forward = Distiller.teacher_forward

    def counted(self, *a, **k):
        forwards.append(self.step)
        return teacher_forward(self, *a, **k)

    monkeypatch.setattr(Distiller, "teacher_forward", counted)
    sets = ["train.max_steps=4", "train.eval_every_epochs=0", "distill.stop_at=0.5", "distill.decay=linear"]
    run = tmp_path / "r"
    with caplog.at_level(logging.INFO, logger="detrdistill"):
        assert main(["distill", "--teacher", str(teacher_dir), *_sets(tiny_overrides(run, synth_dir, *sets))]) == 0
    recs = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert forwards == [0, 1]
    assert any("distillation terms: fall (linear) to 0 at step 3; are off from step 3 of 4" in r.getMessage()
               for r in caplog.records)
    # the estimate counts steps 3-4 at the student's share of the step timed (without the teacher)
    assert any("for the 2 steps left (steps 3..4 without the teacher at about" in r.getMessage() for r in caplog.records)
    for step in (1, 2):
        assert "loss/feature" in recs[step] and "loss/logits_cls" in recs[step]
    for step in (3, 4):
        assert not any(k.split("/", 1)[1] not in {"cls", "bbox", "giou"} for k in recs[step] if k.startswith("loss/"))


@pytest.mark.slow  # every term through the CLI, stopped and resumed
def test_distill_every_term_logs_resumes_and_exports(synth_dir, teacher_dir, tmp_path):
    common = ["train.max_steps=8", "train.checkpoint_every_steps=2", "train.eval_every_epochs=0", *ALL_TERMS]
    ref = tmp_path / "ref"
    assert main(["distill", "--teacher", str(teacher_dir), *_sets(tiny_overrides(ref, synth_dir, *common))]) == 0
    recs = [r for r in read_metrics(ref / "metrics.jsonl") if "loss" in r]
    expected = {"cls", "bbox", "giou", "logits_cls", "logits_bbox", "logits_giou", "feature", "query_prior_cls",
                "query_prior_bbox", "query_prior_giou", "contrastive", "fitnet", "logit_kd"}
    assert expected <= {k.split("/", 1)[1] for k in recs[0] if k.startswith("loss/")}
    for r in recs:
        parts = sum(v for k, v in r.items() if k.startswith("loss/"))
        assert parts == pytest.approx(r["loss"], rel=1e-4)  # the logged terms are the whole loss

    run = tmp_path / "run"
    args = [sys.executable, "-m", "detrdistill.cli", "distill", "--teacher", str(teacher_dir),
            *_sets(tiny_overrides(run, synth_dir, *common))]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        m = run / "metrics.jsonl"
        if m.is_file() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stderr.read().decode()[-1000:]
    proc.send_signal(signal.SIGTERM)  # graceful: finish the step, checkpoint, exit 143 (128 + SIGTERM)
    assert proc.wait(timeout=300) == 143
    stopped = json.loads((run / "eval.json").read_text())
    assert stopped["stopped_early"] and stopped["step"] < 8
    res = subprocess.run(args + ["--resume"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    ref_l = {r["step"]: r for r in recs}
    got = {r["step"]: r for r in read_metrics(run / "metrics.jsonl") if "loss" in r}
    assert sorted(got) == list(range(1, 9))
    for step in range(stopped["step"] + 1, 9):
        for k in ("loss", "loss/logits_cls", "loss/feature", "loss/query_prior_cls"):
            assert got[step][k] == pytest.approx(ref_l[step][k], rel=1e-5, abs=1e-6), (step, k)

    # the export is a plain student: scored by `detrdistill eval` like any model
    assert main(["eval", "--model", str(run / "model"), "--eval-dir", str(tmp_path / "ev"),
                 *_sets(tiny_overrides(run, synth_dir))]) == 0
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert 0.0 <= ev["AP"] <= 100.0


@pytest.mark.slow  # a CLI-trained teacher
def test_distill_refuses_bad_teachers_before_training(synth_dir, teacher_dir, tmp_path, capsys):
    # no teacher at all
    assert main(["distill", *_sets(tiny_overrides(tmp_path / "a", synth_dir))]) == 2
    assert "teacher" in capsys.readouterr().err
    # a teacher directory that does not exist
    assert main(["distill", "--teacher", str(tmp_path / "nope"), *_sets(tiny_overrides(tmp_path / "b", synth_dir))]) == 2
    assert "nope" in capsys.readouterr().err
    # a teacher of an unsupported family (a saved transformers model we have no adapter for)
    from transformers import YolosConfig, YolosForObjectDetection
    yolos = YolosForObjectDetection(YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, image_size=[64, 64], patch_size=16,
                                                num_detection_tokens=5, num_labels=5))
    yolos.save_pretrained(tmp_path / "yolos")
    assert main(["distill", "--teacher", str(tmp_path / "yolos"), *_sets(tiny_overrides(tmp_path / "c", synth_dir))]) == 2
    err = capsys.readouterr().err
    assert "yolos" in err.lower() and "deformable_detr" in err
    # a teacher whose label map differs from the dataset's
    from detrdistill.config import load_config
    from detrdistill.models.build import build_model
    cfg = load_config(None, tiny_overrides(tmp_path, synth_dir, *TEACHER))
    build_model(cfg.model, {0: "cat", 1: "dog"}).save_pretrained(tmp_path / "pets")
    assert main(["distill", "--teacher", str(tmp_path / "pets"), *_sets(tiny_overrides(tmp_path / "d", synth_dir))]) == 2
    err = capsys.readouterr().err
    assert "label" in err or "class" in err
    assert not (tmp_path / "d" / "checkpoints").exists()  # refused before any training step
