"""The benchmark results file: concurrent invocations merge their runs and never train one run twice.

The concurrency tests force their interleavings with events and barriers (no sleeps); their waits have a timeout
only so that a broken lock fails the test instead of hanging it."""
import errno
import json
import os
import threading

import pytest

pytest.importorskip("fcntl")
from benchmarks import distill, distill_report, results_file, teachers  # noqa: E402


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
    # an invocation that read the file before another recorded a teacher variant does not erase it
    assert results_file.merge({**merged, "teachers": {"deformable": {"AP": 45.0}}}, {**mine, "teachers": {}},
                              [])["teachers"] == {"deformable": {"AP": 45.0}}
    assert results_file.merge(merged, mine, [])["command"] == "a && b"  # each command once
    skipped = {**mine, "command": "c"}  # an invocation that found every run done adds no command
    assert results_file.merge(merged, skipped, [])["command"] == "a && b"
    assert results_file.merge(merged, skipped, [_run("baseline", 0)])["command"] == "a && b"  # nor one it redid
    assert results_file.merge(merged, skipped, [_run("baseline", 5)])["command"] == "a && b && c"
    assert results_file.merge(None, skipped, [])["command"] == "c"  # the first invocation is recorded


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


WAIT_S = 60  # a deadlock guard, never reached when the locks work


def test_two_invocations_share_one_file_and_split_the_runs(tmp_path, monkeypatch):
    """Each invocation's first run waits at a barrier until the other one trains too: both are inside a claimed
    run at once, then run on freely; every run is trained by exactly one of them and all land in the file."""
    trained = []
    lock = threading.Lock()
    both_training = threading.Barrier(2, timeout=WAIT_S)

    def fake_train(args, work, teacher, method, seed, steps=None):
        with lock:
            trained.append((method, seed))
            first_two = len(trained) <= 2  # one per invocation: each trains one run at a time
        if first_two:
            both_training.wait()
        return _run(method, seed)

    monkeypatch.setattr(distill, "train_student", fake_train)
    monkeypatch.setattr(distill_report, "bar_and_curve_chart", lambda results, path: None)  # save_with_report's
    monkeypatch.setattr(distill, "params_of", lambda model_dir: 123)
    out = tmp_path / "res.json"
    argv = ["--dataset", "synthetic", "--teacher", str(tmp_path / "no-teacher"), "--methods", "baseline",
            "detrdistill", "--seeds", "0", "1", "--work-dir", str(tmp_path / "work"), "--out", str(out)]
    threads = [threading.Thread(target=distill.main, args=(argv,)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT_S)
    assert not both_training.broken and not any(t.is_alive() for t in threads)
    saved = json.loads(out.read_text())
    keys = sorted((r["method"], r["seed"]) for r in saved["runs"])
    assert keys == [("baseline", 0), ("baseline", 1), ("detrdistill", 0), ("detrdistill", 1)]
    assert sorted(trained) == keys  # each run trained by exactly one invocation
    assert saved["student"]["params"] == 123
    assert out.with_suffix(".md").is_file()


def test_a_second_invocation_waits_for_the_teacher_the_first_trains(tmp_path, monkeypatch):
    """The second invocation asks for the teacher's lock while the first is training it: it waits, then finds it
    trained (the first one finishes only once the second has reached the lock)."""
    calls = []
    training, second_at_lock, finish = threading.Event(), threading.Event(), threading.Event()

    def fake_run(cmd, log_file, env=None):  # "trains" the teacher until told to finish, then its files exist
        calls.append(cmd)
        training.set()
        assert finish.wait(WAIT_S)
        (tmp_path / "work" / "teacher" / "model").mkdir(parents=True, exist_ok=True)
        (tmp_path / "work" / "teacher" / "model" / "config.json").write_text("{}")
        (tmp_path / "work" / "teacher" / "eval.json").write_text("{}")

    real_flock = results_file.fcntl.flock

    def flock(f, op):  # the second invocation says when it asks for the lock (and blocks in the real call)
        if threading.current_thread() is threads[1] and op & results_file.fcntl.LOCK_EX:
            second_at_lock.set()
        return real_flock(f, op)

    monkeypatch.setattr(teachers, "run", fake_run)
    monkeypatch.setattr(results_file.fcntl, "flock", flock)
    args = distill.parse_args(["--dataset", "synthetic", "--work-dir", str(tmp_path / "work")])
    got = []
    threads = [threading.Thread(target=lambda: got.append(teachers.train_teacher(args, tmp_path / "work")))
               for _ in range(2)]
    threads[0].start()
    assert training.wait(WAIT_S)  # the first invocation holds the lock and trains
    threads[1].start()
    assert second_at_lock.wait(WAIT_S)
    finish.set()
    for t in threads:
        t.join(WAIT_S)
    assert len(calls) == 1  # trained once; the other invocation waited and found it done
    assert got == [tmp_path / "work" / "teacher" / "model"] * 2
