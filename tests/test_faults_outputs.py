"""Fault suite, output folders (docs/reliability.md "Output folders"): one writing command per folder at a time
(a lock naming the other process, never stale after a kill), no command writing over or inside its own inputs,
and every refusal before anything is deleted or written."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from tests.conftest import tiny_overrides
from tests.test_faults import QUICK, _data_sets, _one_line_error, _run, _sets, broken_data  # noqa: F401
from tests.test_faults import teacher_dir  # noqa: F401  (module fixture: a tiny teacher)

# slow: trains through the CLI, several processes at once
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))

HOLDER = r"""
import sys
from detrdistill.output_folder import lock_folder
lock_folder(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()
"""


def _hold(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         env=ENV, text=True)
    assert p.stdout.readline().strip() == "locked"
    return p


def _command(cmd: str, folder: Path, synth_dir: Path, teacher: Path, images: Path) -> int:
    if cmd == "train":
        return _run("train", folder, synth_dir)
    if cmd == "distill":
        return _run("distill", folder, synth_dir, flags=["--teacher", str(teacher)])
    if cmd == "eval":
        return _run("eval", folder.parent / "elsewhere", synth_dir, flags=["--model", str(teacher),
                                                                            "--eval-dir", str(folder)])
    if cmd == "predict":
        return main(["predict", str(teacher), str(images), "--out", str(folder)])
    if cmd == "export":
        return main(["export", str(teacher), "--out", str(folder / "m.onnx"), "--height", "64", "--width", "64",
                     "--no-check"])
    return main(["demo", "--preset", "smoke", "--output-dir", str(folder)])


@pytest.mark.parametrize("cmd", ["train", "distill", "eval", "predict", "export", "demo"])
def test_a_folder_in_use_is_refused_naming_the_other_process(cmd, synth_dir, teacher_dir, tmp_path, capsys):
    folder = tmp_path / "out"
    folder.mkdir()
    holder = _hold(folder)
    try:
        assert _command(cmd, folder, synth_dir, teacher_dir, synth_dir / "images") == 2
        line = _one_line_error(capsys)
        assert str(folder) in line and "in use by another detrdistill process" in line
        assert f"pid {holder.pid}: python -c ... {folder}" in line  # its pid and command line
        assert sorted(p.name for p in folder.iterdir()) == [".detrdistill.lock"]  # nothing written
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_never_blocks(synth_dir, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = _hold(out)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (out / ".detrdistill.lock").is_file()  # the file stays behind; its lock died with the process
    assert _run("train", out, synth_dir) == 0
    assert not (out / ".detrdistill.lock").exists()  # released and removed when the run ended


def test_two_runs_started_together_never_mix(synth_dir, tmp_path):
    """Two `train` on one folder started at once: one trains, the other is refused in one line; the folder
    holds one run (its config, each step once)."""
    out = tmp_path / "run"
    procs = {}
    for seed in (1, 2):
        args = ["train", *_sets(tiny_overrides(out, synth_dir, *QUICK, "train.max_steps=4", f"train.seed={seed}"))]
        procs[seed] = subprocess.Popen([sys.executable, "-m", "detrdistill.cli", *args], env=ENV,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {seed: (p.wait(timeout=600), p.stderr.read()) for seed, p in procs.items()}
    codes = sorted(rc for rc, _ in results.values())
    assert codes == [0, 2], {s: err[-1500:] for s, (_, err) in results.items()}
    winner = next(s for s, (rc, _) in results.items() if rc == 0)
    loser_err = next(err for rc, err in results.values() if rc == 2)
    errors = [ln for ln in loser_err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in loser_err
    assert "in use by another detrdistill process" in errors[0] or "holds another run" in errors[0]
    assert f"seed: {winner}" in (out / "config.yaml").read_text()
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3, 4]


def test_overwrite_never_deletes_the_runs_own_inputs(synth_dir, teacher_dir, tmp_path, capsys):
    out = tmp_path / "t2"
    assert _run("train", out, synth_dir) == 0
    weights = (out / "model" / "model.safetensors").read_bytes()
    # the model to start from lies inside the folder --overwrite would clear
    assert _run("train", out, synth_dir, f"model.pretrained={out / 'model'}", flags=["--overwrite"]) == 2
    line = _one_line_error(capsys)
    assert "model.pretrained" in line and str(out / "model") in line
    assert (out / "model" / "model.safetensors").read_bytes() == weights
    # a dataset inside the output folder, and an output folder inside the dataset
    data = out / "mydata"
    data.mkdir()
    for f in ("train.json", "val.json"):
        (data / f).write_bytes((synth_dir / f).read_bytes())
    sets = [f"data.train.ann_file={data / 'train.json'}", f"data.train.image_dir={synth_dir / 'images'}"]
    assert _run("train", out, synth_dir, *sets, flags=["--overwrite"]) == 2
    assert "data.train.ann_file" in _one_line_error(capsys) and (data / "train.json").is_file()
    inside = synth_dir / "images" / "run"
    assert _run("train", inside, synth_dir, *sets) == 2
    assert "lies inside the data.train.image_dir" in _one_line_error(capsys) and not inside.exists()
    # the teacher inside the distillation's own folder
    assert _run("distill", out, synth_dir, flags=["--teacher", str(out / "model"), "--overwrite"]) == 2
    assert "teacher" in _one_line_error(capsys) and (out / "model" / "model.safetensors").read_bytes() == weights


def test_predict_and_export_never_write_over_their_inputs(teacher_dir, tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.new("RGB", (64, 48), (40 * i, 90, 200)).save(photos / f"p{i}.png")
    before = {p.name: p.read_bytes() for p in photos.iterdir()}
    assert main(["predict", str(teacher_dir), str(photos), "--out", str(photos)]) == 2  # the same folder
    assert "is the images" in _one_line_error(capsys)
    assert main(["predict", str(teacher_dir), str(photos / "p0.png"), "--out", str(photos)]) == 2  # contains it
    assert "contains the images" in _one_line_error(capsys)
    assert main(["predict", str(teacher_dir), str(photos), "--out", str(teacher_dir)]) == 2  # into the model
    assert "is the model" in _one_line_error(capsys)
    assert {p.name: p.read_bytes() for p in photos.iterdir()} == before
    assert main(["export", str(teacher_dir), "--out", str(teacher_dir / "model.safetensors"), "--no-check"]) == 2
    assert "lies inside the model" in _one_line_error(capsys)
    assert main(["predict", str(teacher_dir), str(photos), "--out", str(tmp_path / "drawn")]) == 0  # apart: fine
    assert sorted(p.name for p in (tmp_path / "drawn").iterdir()) == ["p0.png", "p1.png", "predictions.json"]


def test_refused_runs_write_nothing(broken_data, synth_dir, teacher_dir, tmp_path, capsys):  # noqa: F811
    d, _ = broken_data
    fresh = tmp_path / "fresh"
    assert _run("train", fresh, synth_dir, *_data_sets(d, "error")) == 2  # the data policy refuses
    assert "dataset defect(s)" in _one_line_error(capsys)
    assert not fresh.exists()  # no run.json, no config.yaml, not even the folder
    # --overwrite of a finished run, refused by its data: the previous run is still all there
    out = tmp_path / "run"
    assert _run("train", out, synth_dir) == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert _run("train", out, synth_dir, *_data_sets(d, "error"), flags=["--overwrite"]) == 2
    assert _run("distill", out, synth_dir, flags=["--teacher", str(tmp_path / "nowhere"), "--overwrite"]) == 2
    capsys.readouterr()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert json.loads((out / "run.json").read_text()) == {"mode": "train"}
