"""The benchmark results file: concurrent invocations merge their runs and never train one run twice."""
import errno
import json
import os
import threading
import time

import pytest

pytest.importorskip("fcntl")
from benchmarks import distill, results_file, teachers  # noqa: E402


def _run(method, seed, ap=10.0):
    return {"method": method, "seed": seed, "AP": ap, "AP50": ap, "AP75": ap, "APs": 0.0, "APm": ap, "APl": ap,
            "split": "val", "steps": 5, "train_seconds": 1.0, "curve_val": [[5, ap]]}


def test_merge_keeps_disk_runs_and_appends_new_ones_once():
    disk = {"runs": [_run("baseline", 0)], "date": "2026-11-30", "command": "a", "teacher": {"AP": 1.0},
            "student": {"params": 5}}
    mine = {"runs": [_run("ignored", 9)], "command": "b", "dates": ["2026-12-01"], "teacher": {},
            "student": {"config": "s.yaml"}}
    merged = results_file.merge(disk, mine, [_run("baseline", 0, ap=99.0), _run("detrdistill", 0)])
    assert [(r["method"], r["seed"], r["AP"]) for r in merged["runs"]] == [("baseline", 0, 10.0),
                                                                           ("detrdistill", 0, 10.0)]
    assert merged["dates"] == ["2026-11-30", "2026-12-01"]  # a file with the old single "date" keeps it
    assert merged["command"] == "a && b"
    assert merged["teacher"] == {"AP": 1.0}  # a chunk without a teacher does not erase the recorded one
    assert merged["student"] == {"params": 5, "config": "s.yaml"}
    assert results_file.merge(merged, mine, [])["command"] == "a && b"  # each command once


def test_write_atomic_never_leaves_a_half_written_file(tmp_path, monkeypatch):
    out = tmp_path / "r.md"
    results_file.write_atomic(out, "old\n")

    def crash_half_way(fd):  # the disk fills up after half the text reached the temporary file
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", crash_half_way)
    with pytest.raises(OSError):
        results_file.write_atomic(out, "new text, longer than the old one\n")
    monkeypatch.undo()
    assert out.read_text() == "old\n"
    results_file.write_atomic(out, {"runs": []})
    assert json.loads(out.read_text()) == {"runs": []}
    results_file.write_atomic(out, b"\x89PNG\r\n")  # bytes (the chart) are written as they are
    assert out.read_bytes() == b"\x89PNG\r\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.md"]  # the temporary file was renamed, not left


def test_claim_is_exclusive_and_released(tmp_path):
    with results_file.claim(tmp_path / "run") as first:
        assert first
        with results_file.claim(tmp_path / "run") as second:  # another open file description: held elsewhere
            assert not second
    with results_file.claim(tmp_path / "run") as again:
        assert again


def test_two_invocations_share_one_file_and_split_the_runs(tmp_path, monkeypatch):
    trained = []
    lock = threading.Lock()

    def fake_train(args, work, teacher, method, seed, steps=None):
        with lock:
            trained.append((method, seed))
        time.sleep(0.3)
        return _run(method, seed)

    monkeypatch.setattr(distill, "train_student", fake_train)
    monkeypatch.setattr(distill, "bar_and_curve_chart", lambda results, path: None)
    monkeypatch.setattr(distill, "params_of", lambda model_dir: 123)
    out = tmp_path / "res.json"
    argv = ["--dataset", "synthetic", "--teacher", str(tmp_path / "no-teacher"), "--methods", "baseline",
            "detrdistill", "--seeds", "0", "1", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    threads = [threading.Thread(target=distill.main, args=(argv,)) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.05)
    for t in threads:
        t.join()
    saved = json.loads(out.read_text())
    keys = sorted((r["method"], r["seed"]) for r in saved["runs"])
    assert keys == [("baseline", 0), ("baseline", 1), ("detrdistill", 0), ("detrdistill", 1)]
    assert sorted(trained) == keys  # each run trained by exactly one invocation
    assert saved["student"]["params"] == 123
    assert out.with_suffix(".md").is_file()


def test_a_second_invocation_waits_for_the_teacher_the_first_trains(tmp_path, monkeypatch):
    calls = []

    def fake_run(cmd, log_file, env=None):  # "trains" the teacher: slow, then its files exist
        calls.append(cmd)
        time.sleep(0.3)
        (tmp_path / "work" / "teacher" / "model").mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / "teacher" / "model" / "config.json").write_text("{}")
        (tmp_path / "work" / "teacher" / "eval.json").write_text("{}")

    monkeypatch.setattr(teachers, "run", fake_run)
    args = distill.parse_args(["--dataset", "synthetic", "--work-dir", str(tmp_path / "work")])
    got = []
    threads = [threading.Thread(target=lambda: got.append(teachers.train_teacher(args, tmp_path / "work")))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1  # trained once; the other invocation waited and found it done
    assert got == [tmp_path / "work" / "teacher" / "model"] * 2
