"""Fault suite, full disk (docs/reliability.md "Machine"): every write failure, whatever the library raises
(torch's zip writer: RuntimeError; safetensors: SafetensorError; plain OSError), is one line naming the folder
and the space needed, and leaves no partial file; on a real, small file system too."""
import collections
import errno
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from tests.test_faults import _one_line_error, _run

# slow: trains through the CLI onto a failing disk
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]

# the exact messages torch 2.x and safetensors give when the disk fills up mid-write (measured on a full tmpfs)
TORCH_FULL = "[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"
SAFETENSORS_FULL = "Error while serializing: I/O error: No space left on device (os error 28)"
USAGE = collections.namedtuple("usage", "total used free")
STEPS = ["train.max_steps=3", "train.checkpoint_every_steps=1", "train.keep_checkpoints=2"]


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


def test_write_atomic_is_whole_or_nothing(tmp_path, monkeypatch):
    from detrdistill.io_atomic import WriteFailedError, write_atomic

    out = tmp_path / "f.json"
    write_atomic(out, "old")

    def full(fd):  # the disk fills up while the temporary file is being made durable
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(WriteFailedError) as e:
        write_atomic(out, "new" * 1000)
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and str(tmp_path) in msg and "no space left" in msg and "needs about 2.9 KiB" in msg
    assert out.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]
    assert isinstance(e.value, OSError)  # `except OSError` around a write still catches it


@pytest.mark.parametrize("library", ["torch_zip", "safetensors", "oserror"])
def test_checkpoint_write_failure_is_one_line_and_leaves_no_partial_files(library, synth_dir, tmp_path, capsys,
                                                                          monkeypatch):
    import detrdistill.engine.checkpoint as ck

    calls = {"n": 0}
    real_save, real_save_file = torch.save, ck.save_file

    def failing_torch_save(obj, f, *a, **k):  # the second checkpoint's optimizer.pt: half written, then full
        if str(f).endswith("optimizer.pt") and "step-00000002" in str(f):
            real_save(obj, f, *a, **k)
            os.truncate(f, os.path.getsize(f) // 2)
            raise RuntimeError(TORCH_FULL) if library == "torch_zip" else \
                OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *a, **k)

    def failing_save_file(tensors, filename, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            Path(filename).write_bytes(b"partial")
            raise SafetensorError(SAFETENSORS_FULL)
        return real_save_file(tensors, filename, *a, **k)

    if library == "safetensors":
        monkeypatch.setattr(ck, "save_file", failing_save_file)
    else:
        monkeypatch.setattr(ck.torch, "save", failing_torch_save)
    if library == "torch_zip":  # its message names no cause: the file system's free space tells a full disk
        monkeypatch.setattr(shutil, "disk_usage", lambda p: USAGE(10 << 30, 10 << 30, 4096))
    out = tmp_path / "run"
    assert _run("train", out, synth_dir, *STEPS) == 2
    line = _one_line_error(capsys)
    assert f"{out / 'checkpoints'}: no space left on the device writing checkpoint step-00000002" in line
    assert "needs about" in line and "MiB" in line and "--resume" in line
    assert _leftovers(out) == [] and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]


def test_export_and_predict_write_failures_are_one_line(synth_dir, tmp_path, capsys, monkeypatch):
    from transformers import PreTrainedModel

    real = PreTrainedModel.save_pretrained

    def full(self, path, *a, **k):  # the exported weights: half written, then safetensors' full-disk error
        real(self, path, *a, **k)
        (Path(path) / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError(SAFETENSORS_FULL)
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", full)
    out = tmp_path / "run"
    assert _run("train", out, synth_dir) == 2
    line = _one_line_error(capsys)
    assert f"{out}: no space left on the device writing model/" in line and "needs about" in line
    assert not (out / "model").exists() and not (out / "model.tmp").exists()
    monkeypatch.undo()
    assert _run("train", out, synth_dir, flags=["--resume"]) == 0  # the next run with --resume exports it
    images = tmp_path / "img"
    images.mkdir()
    shutil.copy(next((synth_dir / "images").glob("*.png")), images / "a.png")

    def full_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_fsync)
    assert main(["predict", str(out / "model"), str(images), "--out", str(tmp_path / "drawn")]) == 2
    assert f"{tmp_path / 'drawn'}: no space left on the device writing a.png" in _one_line_error(capsys)
    monkeypatch.undo()
    assert not (tmp_path / "drawn").exists() or not any((tmp_path / "drawn").iterdir())


# ------------------------------------------------------------------------------------ a real full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2.5 MiB tmpfs (root only, where mounting works): room for one tiny checkpoint (1.6 MB), not two."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (and mount): the real full-disk case is not run here")
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2500k", "tmpfs", str(mnt)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()[:120]}): the real full-disk case is not run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_real_full_disk_is_one_line_then_resume_finishes(small_disk, synth_dir, capsys):
    out = small_disk / "run"
    assert _run("train", out, synth_dir, *STEPS) == 2
    line = _one_line_error(capsys)
    assert f"{out / 'checkpoints'}: no space left on the device writing checkpoint step-00000002" in line
    assert "needs about" in line and "free" in line and "Traceback" not in line
    assert _leftovers(out) == [] and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]
    assert shutil.disk_usage(small_disk).free > 500_000  # the partial checkpoint's space was given back
    subprocess.run(["mount", "-o", "remount,size=8m", str(small_disk)], check=True)  # space freed: go on
    assert _run("train", out, synth_dir, *STEPS, flags=["--resume"]) == 0
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r] == [1, 2, 3]
