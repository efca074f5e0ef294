"""benchmarks/supersede.py: an old results file keeps its runs, names its replacement and why, and its report opens
with one note linking the new file however often it is marked."""
from __future__ import annotations

import json

import pytest

from benchmarks.distill_report import summarize
from benchmarks.supersede import main, supersede


def _files(tmp_path):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    runs = [{"method": "baseline", "seed": 0, "AP": 40.0, "AP50": 60.0, "AP75": 40.0, "steps": 5}]
    old.write_text(json.dumps({"runs": runs, "dataset": "bccd"}))
    old.with_suffix(".md").write_text("# Distillation benchmark: bccd\n\n| table |\n")
    new.write_text(json.dumps({"runs": []}))
    return old, new


def test_marks_the_old_file_and_opens_its_report_with_one_note(tmp_path):
    old, new = _files(tmp_path)
    supersede(old, new, "rerun on one commit")
    data = json.loads(old.read_text())
    assert data["runs"][0]["AP"] == 40.0  # the runs stay
    assert data["superseded_by"] == str(new) and data["superseded_why"] == "rerun on one commit"
    assert main([str(old), "--by", str(new), "--why", "second reason"]) == 0  # marked again: one note, the new one
    md = old.with_suffix(".md").read_text()
    assert md.count("**Superseded**") == 1 and "second reason" in md and "rerun on one commit" not in md
    assert md.endswith("# Distillation benchmark: bccd\n\n| table |\n")  # the report itself is kept
    assert "(new.md)" in md  # the link opens the rerun's report


def test_the_report_renders_the_same_note():
    results = {"superseded_by": "benchmarks/results/new.json", "superseded_why": "why", "runs": [], "teacher": None,
               "dataset": "d", "device": "cpu", "student": {}, "command": "c"}
    assert summarize(results).startswith("> **Superseded** by [benchmarks/results/new.json](new.md): why\n\n")


def test_refuses_a_missing_file_itself_and_an_empty_reason(tmp_path):
    old, new = _files(tmp_path)
    with pytest.raises(SystemExit, match="no such results file"):
        supersede(old, tmp_path / "missing.json", "x")
    with pytest.raises(SystemExit, match="itself"):
        supersede(old, old, "x")
    with pytest.raises(SystemExit, match="--why"):
        supersede(old, new, "  ")
    assert "superseded_by" not in json.loads(old.read_text())  # nothing written on refusal
