"""Fault suite: every expected failure ends in its documented outcome (docs/reliability.md),
never in a traceback or in lost or mixed-up work.

Broken inputs x {validate, train, eval, distill}; kill -9 at several points (mid-step, inside a checkpoint
write, mid-metrics-line, right after a checkpoint is published) then --resume reaches bit-identical final
weights; damaged newest checkpoints; reused output folders; read-only folders; full disk; signals.
Tiny models and a handful of steps: the whole file runs in a few minutes on 2 busy cores.
"""
import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from tests.conftest import tiny_overrides

# slow: the fault suite trains, distils and evaluates through the CLI
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

QUICK = ["train.eval_every_epochs=0", "train.max_steps=2"]
TEACHER = ["model.d_model=64", "model.decoder_layers=3", "model.num_queries=15"]
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _sets(overrides):
    return sum((["--set", o] for o in overrides), [])


def _run(cmd, out, synth_dir, *extra, flags=()):
    """``detrdistill <cmd>`` in process on the tiny config; returns the exit code."""
    return main([cmd, *flags, *_sets(tiny_overrides(out, synth_dir, *QUICK, *extra))])


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [ln for ln in err if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in "\n".join(err), err[-5:]
    return errors[0]


def _weights(path: Path) -> dict:
    return load_file(str(path / "model" / "model.safetensors"))


def _assert_same_weights(a: Path, b: Path):
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k  # bit-identical


@pytest.fixture(scope="module")
def teacher_dir(synth_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("f_teacher")
    assert _run("train", out, synth_dir, *TEACHER) == 0
    return out / "model"


# ------------------------------------------------------------------------------------ broken images
@pytest.fixture(scope="module")
def broken_data(synth_dir, tmp_path_factory):
    """The synthetic train split with image 0 a truncated JPEG (decodes with truncation tolerance),
    image 1 a zero-byte file, image 2 garbage bytes and image 3 missing."""
    d = tmp_path_factory.mktemp("broken")
    shutil.copytree(synth_dir / "images", d / "images")
    doc = json.loads((synth_dir / "train.json").read_text())
    ims = doc["images"]
    buf = io.BytesIO()
    Image.open(d / "images" / ims[0]["file_name"]).convert("RGB").save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    ims[0]["file_name"] = "cut.jpg"
    (d / "images" / "cut.jpg").write_bytes(data[: len(data) * 6 // 10])  # a copy cut short
    (d / "images" / ims[1]["file_name"]).write_bytes(b"")
    (d / "images" / ims[2]["file_name"]).write_bytes(b"this is not an image")
    (d / "images" / ims[3]["file_name"]).unlink()
    (d / "train.json").write_text(json.dumps(doc))
    expected = {"truncated_image": ims[0], "empty_file": ims[1], "corrupt_image": ims[2], "missing_image": ims[3]}
    return d, expected


def _data_sets(d: Path, policy: str) -> list[str]:
    return [f"data.train.ann_file={d / 'train.json'}", f"data.train.image_dir={d / 'images'}",
            f"data.val.ann_file={d / 'train.json'}", f"data.val.image_dir={d / 'images'}", f"data.defects={policy}"]


def test_validate_reports_each_broken_file_with_name_and_id(broken_data, capsys):
    d, expected = broken_data
    assert main(["data", "validate", str(d / "train.json"), "--images", str(d / "images"), "--debug"]) == 1
    out = capsys.readouterr().out
    for kind, im in expected.items():
        line = next(ln for ln in out.splitlines() if f": {kind}:" in ln)
        assert f"image {im['id']} ({im['file_name']})" in line, line


def test_validate_warns_on_an_empty_dataset(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "e.json").write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    assert main(["data", "validate", str(tmp_path / "e.json"), "--images", str(tmp_path / "images")]) == 0
    assert "empty_dataset" in capsys.readouterr().out


def test_policies_drop_or_keep_broken_images_before_the_first_step(broken_data, caplog):
    from detrdistill.data import CocoDetection, DatasetError

    d, expected = broken_data
    with caplog.at_level(logging.WARNING):
        repair = CocoDetection(d / "train.json", d / "images", defects="repair")
    ids = {im["id"] for im in repair.images}
    assert expected["truncated_image"]["id"] in ids and repair.truncated_ids == {expected["truncated_image"]["id"]}
    assert not ids & {expected[k]["id"] for k in ("empty_file", "corrupt_image", "missing_image")}
    assert "1 truncated image(s) kept" in caplog.text
    for i in range(len(repair)):  # every kept image is readable: nothing can fail later in a loader worker
        assert repair[i][0].shape[0] == 3
    skip = CocoDetection(d / "train.json", d / "images", defects="skip")
    assert len(skip) == len(repair) - 1 and expected["truncated_image"]["id"] not in {im["id"] for im in skip.images}
    with pytest.raises(DatasetError) as e:
        CocoDetection(d / "train.json", d / "images", defects="error")
    msg = str(e.value)
    assert "\n" not in msg and not msg.endswith(":") and "truncated_image=1" in msg and "cut.jpg" in msg


@pytest.mark.parametrize("cmd", ["train", "distill", "eval"])
def test_defects_error_refuses_before_training_in_one_line(cmd, broken_data, synth_dir, teacher_dir, tmp_path,
                                                           capsys):
    d, _ = broken_data
    flags = {"distill": ["--teacher", str(teacher_dir)], "eval": ["--model", str(teacher_dir)]}.get(cmd, [])
    assert _run(cmd, tmp_path / "run", synth_dir, *_data_sets(d, "error"), flags=flags) == 2
    line = _one_line_error(capsys)
    assert "dataset defect(s)" in line and "cut.jpg" in line and "data.defects=repair" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_repair_trains_distills_and_evaluates_on_the_broken_set(broken_data, synth_dir, teacher_dir, tmp_path):
    d, _ = broken_data
    # 13 usable images (the truncated one kept); the final eval reads every one of them
    sets = [*_data_sets(d, "repair"), "train.max_steps=3"]
    assert _run("train", tmp_path / "t", synth_dir, *sets) == 0
    assert _run("distill", tmp_path / "d", synth_dir, *sets, flags=["--teacher", str(teacher_dir)]) == 0
    assert _run("eval", tmp_path / "t", synth_dir, *sets, flags=["--model", str(tmp_path / "t" / "model"),
                                                                   "--eval-dir", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "eval.json").read_text())["AP"] >= 0.0


# ------------------------------------------------------------------------------------ model files
def _damaged_model(src: Path, dst: Path, how: str) -> Path:
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    if how == "truncated":
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    elif how == "empty":
        f.write_bytes(b"")
    else:
        f.unlink()
    return dst


@pytest.mark.parametrize("how", ["truncated", "empty", "missing"])
def test_bad_weights_file_is_one_line_for_teacher_and_eval(how, teacher_dir, synth_dir, tmp_path, capsys):
    bad = _damaged_model(teacher_dir, tmp_path / "bad", how)
    assert _run("distill", tmp_path / "d", synth_dir, flags=["--teacher", str(bad)]) == 2
    assert str(bad / "model.safetensors") in _one_line_error(capsys)
    assert not (tmp_path / "d" / "metrics.jsonl").exists()
    assert _run("eval", tmp_path / "e", synth_dir, flags=["--model", str(bad)]) == 2
    assert str(bad / "model.safetensors") in _one_line_error(capsys)
    assert _run("train", tmp_path / "t", synth_dir, *TEACHER, f"model.pretrained={bad}") == 2  # init weights
    assert str(bad / "model.safetensors") in _one_line_error(capsys)


# ------------------------------------------------------------------------------------ output folders
def test_reused_output_folder_refused_resumed_or_overwritten(synth_dir, tmp_path, capsys, caplog):
    out = tmp_path / "run"
    assert _run("train", out, synth_dir) == 0
    before = {p: p.read_bytes() for p in (out / "config.yaml", out / "metrics.jsonl", out / "model" / "model.safetensors")}
    # 1. a fresh run in a used folder is refused, nothing touched
    assert _run("train", out, synth_dir) == 2
    line = _one_line_error(capsys)
    assert "holds another run" in line and "--resume" in line and "--overwrite" in line
    # 2. --resume with a changed model is refused naming the key, before config.yaml is touched
    assert _run("train", out, synth_dir, "model.d_model=64", "optim.lr=5e-4", flags=["--resume"]) == 2
    line = _one_line_error(capsys)
    assert "model.d_model" in line and "optim.lr" in line
    assert {p: p.read_bytes() for p in before} == before
    # 3. --resume with a longer training continues (only the length changed)
    assert _run("train", out, synth_dir, "train.max_steps=3", flags=["--resume"]) == 0
    assert sorted(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r) == [1, 2, 3]
    # 4. --overwrite replaces the run, said in one warning line
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        assert _run("train", out, synth_dir, "model.d_model=64", flags=["--overwrite"]) == 0
    assert sum("--overwrite: replaced the previous run" in r.message for r in caplog.records) == 1
    assert sorted(r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r) == [1, 2]
    # 5. a distillation never writes into the folder holding its teacher, even with --overwrite
    assert _run("distill", out, synth_dir, flags=["--teacher", str(out / "model"), "--overwrite"]) == 2
    assert "teacher" in _one_line_error(capsys)
    assert (out / "model" / "model.safetensors").is_file()


def test_no_resume_warning_unless_asked(synth_dir, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        assert _run("train", tmp_path / "run", synth_dir) == 0
    assert "--resume" not in caplog.text


def test_train_and_distill_never_share_the_default_folder(monkeypatch, tmp_path):
    import detrdistill.engine.trainer as trainer

    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "synthetic" / "model").mkdir(parents=True)  # the teacher folder named must exist
    seen = {}
    monkeypatch.setattr(trainer, "run_training",
                        lambda cfg, task_type, **kw: seen.setdefault(task_type.name, cfg.train.output_dir))
    assert main(["train"]) == 0 and main(["distill", "--teacher", "runs/synthetic/model"]) == 0
    assert seen == {"train": "runs/synthetic", "distill": "runs/synthetic_distill"}
    seen.clear()  # an explicit folder is used as given
    assert main(["distill", "--teacher", "t", "--output-dir", "runs/x"]) == 0 and seen["distill"] == "runs/x"


# ------------------------------------------------------------------------------------ read-only (full disk: test_faults_disk.py)
def _unwritable(path: Path) -> Path:
    """A folder path nothing can be written into: read-only (chmod) when not root; as root, where chmod
    does not stop writes, a plain file stands where the folder is expected."""
    if IS_ROOT:
        path.write_text("in the way")
    else:
        path.mkdir()
        path.chmod(0o555)
    return path


@pytest.mark.parametrize("cmd", ["train", "distill", "eval", "data synth", "demo"])
def test_unwritable_output_folder_is_one_line(cmd, synth_dir, teacher_dir, tmp_path, capsys):
    bad = _unwritable(tmp_path / "ro")
    if cmd == "train":
        rc = _run("train", bad, synth_dir)
    elif cmd == "distill":
        rc = _run("distill", bad, synth_dir, flags=["--teacher", str(teacher_dir)])
    elif cmd == "eval":
        rc = _run("eval", tmp_path / "x", synth_dir, flags=["--model", str(teacher_dir), "--eval-dir", str(bad)])
    elif cmd == "data synth":
        rc = main(["data", "synth", str(bad / "sub"), "--train-images", "4", "--val-images", "4", "--size", "64"])
    else:
        rc = main(["demo", "--preset", "smoke", "--output-dir", str(bad / "sub")])
    assert rc == 2
    assert str(bad) in _one_line_error(capsys)


@pytest.mark.parametrize("sub", ["checkpoints", "model"])
def test_unwritable_checkpoints_or_model_fails_at_start_up(sub, synth_dir, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    _unwritable(out / sub)
    assert _run("train", out, synth_dir) == 2
    assert str(out / sub) in _one_line_error(capsys)
    assert not (out / "metrics.jsonl").exists()  # refused before the first step


# ------------------------------------------------------------------------------------ signals and CLI
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_then_exits_non_zero(sig, code, synth_dir, tmp_path, monkeypatch):
    from detrdistill.engine.metrics import MetricsLog

    write = MetricsLog.write

    def write_then_signal(self, rec):
        write(self, rec)
        if rec.get("step") == 1 and "loss" in rec:
            os.kill(os.getpid(), sig)
    monkeypatch.setattr(MetricsLog, "write", write_then_signal)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir, "train.max_steps=5") == code
    assert (out / "checkpoints" / "step-00000001" / "state.json").is_file()  # saved before exiting
    assert json.loads((out / "eval.json").read_text())["stopped_early"]


def test_a_signal_during_a_checkpoint_still_marks_the_run_stopped_early(synth_dir, tmp_path, monkeypatch):
    """A stop that lands while the periodic checkpoint is written (after the step's stop check) ends the loop at
    once; eval.json must still say the run stopped early, or a benchmark would score a cut-short run as finished."""
    from detrdistill.engine import checkpoint as ckpt, trainer

    save, sent = ckpt.save_checkpoint, []

    def save_then_signal(out_dir, *args, **kwargs):
        save(out_dir, *args, **kwargs)
        if args[3]["step"] == 2 and not sent:  # the periodic save of step 2 (the stop-time save follows it)
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM)
    monkeypatch.setattr(trainer, "save_checkpoint", save_then_signal)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir, "train.max_steps=6", "train.checkpoint_every_steps=2") == 143
    ev = json.loads((out / "eval.json").read_text())
    assert ev["step"] == 2 and ev["stopped_early"]


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_the_whole_process_group_saves_too(sig, code, synth_dir, tmp_path, monkeypatch):
    """Ctrl-C or a scheduler's stop reaches the data-loader workers as well as the main process: the stop-time
    checkpoint is still written (a killed worker would make torch raise in the middle of that save)."""
    import multiprocessing

    from detrdistill.engine.metrics import MetricsLog

    write, workers = MetricsLog.write, []

    def write_then_signal_group(self, rec):
        write(self, rec)
        if rec.get("step") == 1 and "loss" in rec:
            workers.extend(multiprocessing.active_children())
            for w in workers:  # from another process, as a terminal or scheduler does (torch's workers exit
                subprocess.run(["kill", f"-{int(sig)}", str(w.pid)], check=True)  # quietly on their parent's)
            time.sleep(0.5)  # a worker the signal kills is dead, and torch told, before the main process's turn
            os.kill(os.getpid(), sig)
    monkeypatch.setattr(MetricsLog, "write", write_then_signal_group)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir, "train.max_steps=5", "data.num_workers=1") == code
    assert workers  # the loader had a worker process to signal
    assert (out / "checkpoints" / "step-00000001" / "state.json").is_file()
    assert not list((out / "checkpoints").glob("*.tmp"))
    assert all(w.exitcode is not None and w.exitcode >= 0 for w in workers)  # none was killed by the signal


def test_debug_is_accepted_anywhere(tmp_path, capsys):
    for argv in (["--debug", "data", "synth"], ["data", "--debug", "synth"], ["data", "synth", "--debug"]):
        out = tmp_path / str(len(list(tmp_path.iterdir())))
        assert main([*argv, str(out), "--train-images", "4", "--val-images", "4", "--size", "64"]) == 0
        assert (out / "train.json").is_file()


def test_torn_metrics_line_is_repaired_and_a_bad_middle_line_named(tmp_path, caplog):
    from detrdistill.engine.metrics import MetricsError, MetricsLog

    p = tmp_path / "metrics.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "loss": 0.5}\n{"step": 3, "lo')
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        MetricsLog(p).truncate_after(5)
    assert "torn" in caplog.text and [r["step"] for r in read_metrics(p)] == [1, 2]
    p.write_text('{"step": 1}\nnot json\n{"step": 3}\n')
    with pytest.raises(MetricsError, match=f"{p}: line 2"):
        MetricsLog(p).truncate_after(5)


def test_crash_in_final_eval_leaves_a_model_dir_with_its_processor(synth_dir, tmp_path, monkeypatch):
    """The exported model and its image processor are published together, before the final evaluation."""
    from detrdistill.engine import trainer

    def broken_eval(self, tag):
        if tag == "final eval":
            raise OSError(errno.EIO, "simulated failure during the final evaluation")
        return None
    monkeypatch.setattr(trainer.Run, "evaluate", broken_eval)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir) != 0
    model = out / "model"
    assert (model / "model.safetensors").is_file() and (model / "config.json").is_file()
    assert json.loads((model / "preprocessor_config.json").read_text())["size"]["shortest_edge"] == 64
    assert not (model / "README.md").exists() and not (out / "model.tmp").exists()
