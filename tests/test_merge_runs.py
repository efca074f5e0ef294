"""benchmarks/merge_runs.py: runs made in another copy of a results file (a worktree at the file's commit) are
brought into it with this file's header kept; conflicting copies are refused with nothing written."""
import copy
import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("fcntl")
from benchmarks import merge_runs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "benchmarks" / "results" / "bccd-deimv2-small-cpu-amd-2026-12-07.json"


def _copies(tmp_path):
    into = tmp_path / "here" / SOURCE.name
    into.parent.mkdir()
    shutil.copy(SOURCE, into)
    here = json.loads(into.read_text())
    here.pop("baseline_long", None)
    here["runs"] = [r for r in here["runs"] if r["method"] != "baseline_long"]
    into.write_text(json.dumps(here))
    other = copy.deepcopy(here)
    other["teacher"] = {}  # what a baseline-only invocation at an older commit writes
    record = {"steps": 6331, "cost_ratio": 2.638, "from": "detrdistill_quality_warmup"}
    other["baseline_long"] = record
    long_run = {**other["runs"][0], "method": "baseline_long", "steps": 6331, "AP": 50.0, "date": "2026-12-08"}
    other["runs"].append(long_run)
    other["command"] = here["command"] + " && python benchmarks/distill.py --methods baseline_long"
    path = tmp_path / "worktree" / SOURCE.name
    path.parent.mkdir()
    path.write_text(json.dumps(other))
    return into, path, here, record


def test_new_runs_come_in_and_this_files_header_stays(tmp_path, capsys):
    into, other, here, record = _copies(tmp_path)
    assert merge_runs.main([str(other), str(into)]) == 0
    got = json.loads(into.read_text())
    assert got["teacher"] == here["teacher"] and got["teacher"]  # not the worktree's empty record
    assert [r["method"] for r in got["runs"]] == [r["method"] for r in here["runs"]] + ["baseline_long"]
    assert got["baseline_long"] == record and "2026-12-08" in got["dates"]
    assert got["command"].endswith("--methods baseline_long") and got["command"].count(" && ") == \
        here["command"].count(" && ") + 1
    assert "baseline_long" in into.with_suffix(".md").read_text() and into.with_suffix(".png").is_file()
    assert "1 run(s) added" in capsys.readouterr().out
    assert merge_runs.main([str(other), str(into)]) == 0  # again: nothing new, nothing changes
    assert json.loads(into.read_text()) == got


def test_a_run_held_by_both_with_another_result_is_refused_and_nothing_written(tmp_path, capsys):
    into, other, _, _ = _copies(tmp_path)
    changed = json.loads(other.read_text())
    changed["runs"][0]["AP"] += 1.0
    other.write_text(json.dumps(changed))
    before = into.read_bytes()
    assert merge_runs.main([str(other), str(into)]) == 2
    assert "seed" in capsys.readouterr().err and into.read_bytes() == before
    assert not into.with_suffix(".md").exists()


def test_a_run_from_another_environment_needs_allow_mixed(tmp_path, capsys):
    into, other, _, _ = _copies(tmp_path)
    moved = json.loads(other.read_text())
    moved["runs"][-1]["env"] = {**moved["runs"][-1]["env"], "commit": "0" * 40}
    other.write_text(json.dumps(moved))
    before = into.read_bytes()
    assert merge_runs.main([str(other), str(into)]) == 2
    assert "--allow-mixed" in capsys.readouterr().err and into.read_bytes() == before
    assert merge_runs.main([str(other), str(into), "--allow-mixed"]) == 0
    assert json.loads(into.read_text())["runs"][-1]["method"] == "baseline_long"


def test_teacher_records_made_in_the_other_copy_come_in_and_this_files_stay(tmp_path):
    """The teacher of ``M@NAME`` runs made in a worktree is recorded there: its record comes with them (a file
    holding those runs without their teacher's record would leave them out of the teacher-strength curve)."""
    into, other, here, _ = _copies(tmp_path)
    theirs = json.loads(other.read_text())
    theirs["teachers"] = {"t4800": {"spec": "steps:4800", "AP": 55.0}, "t600": {"spec": "snapshot:600", "AP": 1.0}}
    other.write_text(json.dumps(theirs))
    mine = json.loads(into.read_text())
    mine["teachers"] = {"t600": {"spec": "snapshot:600", "AP": 30.0}}
    into.write_text(json.dumps(mine))
    assert merge_runs.main([str(other), str(into)]) == 0
    got = json.loads(into.read_text())
    assert got["teachers"] == {"t600": {"spec": "snapshot:600", "AP": 30.0}, "t4800": {"spec": "steps:4800", "AP": 55.0}}
    assert got["teacher"] == here["teacher"]


def test_the_main_teacher_comes_from_the_other_copy_when_this_file_has_none(tmp_path):
    into, other, here, _ = _copies(tmp_path)
    mine = json.loads(into.read_text())
    mine["teacher"] = {}
    into.write_text(json.dumps(mine))
    theirs = json.loads(other.read_text())
    theirs["teacher"] = here["teacher"]
    other.write_text(json.dumps(theirs))
    assert merge_runs.main([str(other), str(into)]) == 0
    assert json.loads(into.read_text())["teacher"] == here["teacher"]


def test_a_file_this_checkout_lacks_is_the_other_copy(tmp_path):
    _, other, _, _ = _copies(tmp_path)
    into = tmp_path / "new" / other.name
    into.parent.mkdir()
    assert merge_runs.main([str(other), str(into)]) == 0
    assert json.loads(into.read_text()) == json.loads(other.read_text())
    assert into.with_suffix(".md").is_file()
    assert merge_runs.main([str(tmp_path / "missing.json"), str(into)]) == 2
