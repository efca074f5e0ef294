"""`detrdistill demo` pipeline (smoke preset: seconds): three runs, comparison table, figures, reuse."""
import json
from pathlib import Path

import pytest

from detrdistill.cli import main


@pytest.mark.slow  # three CLI trainings
def test_demo_smoke_writes_table_and_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "smoke", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["runs"]) == {"teacher", "baseline", "distilled"}
    assert summary["runs"]["distilled"]["params"] == summary["runs"]["baseline"]["params"]  # same student
    assert summary["runs"]["teacher"]["params"] > summary["runs"]["baseline"]["params"]
    for f in summary["figures"]:
        data = open(f, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, f
    assert "| student distilled |" in printed and "| student alone |" in printed and "figures:" in printed
    # the README's reference is named, and not compared with another preset
    assert "README reference figures are for --preset cpu; this run used --preset smoke" in printed
    # figures: what a reader of the files gets (PNG text chunks: every panel's title and axis labels)
    from PIL import Image
    text = {Path(f).name: Image.open(f).text for f in summary["figures"]}
    curves = text["loss_curves.png"]["Description"].splitlines()
    assert len(curves) == 2 and all("| x: step | y: loss (" in ln for ln in curves), curves
    mask = text["feature_mask.png"]["Description"]
    assert "mask, level 0 (" in mask and " cells)" in mask and "((" not in mask, mask
    assert text["predictions.png"]["Title"].startswith("predictions")
    # a second call reuses the finished runs instead of training again
    mtime = (out / "teacher" / "model" / "config.json").stat().st_mtime
    assert main(["demo", "--preset", "smoke", "--output-dir", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "teacher" / "model" / "config.json").stat().st_mtime == mtime


def test_box_labels_never_overlap():
    from detrdistill.viz import label_position

    placed = []
    corners = [(10, 10), (12, 11), (14, 10), (200, 10), (11, 30)]
    spots = [label_position(x, y, placed, line_h=8, width=40) for x, y in corners]
    for i, (x, y) in enumerate(spots):
        for px, py in spots[:i]:
            assert not (abs(x - px) < 40 and abs(y - py) < 8), spots
    assert spots[3] == (200, 10)  # far from the others: stays at its box's corner


def test_the_demo_prints_the_readme_reference_beside_its_own_figures():
    """For the reference's preset: a column with the reference AP (mean ± std over its seeds, and this seed's own
    value), and a note with the reference's command, threads and time."""
    from detrdistill.demo import format_table, reference_note
    from detrdistill.demo_reference import load_reference, mean_sd

    ref = load_reference()
    assert ref is not None and ref["preset"] == "cpu" and len(ref["seeds"]) >= 3
    runs = {r: {"AP": 1.0 + i, "AP50": 2.0, "AP75": 0.5, "params": 1000, "train_seconds": 60.0, "wall_seconds": 61.0}
            for i, r in enumerate(("teacher", "baseline", "distilled"))}
    summary = {"preset": "cpu", "seed": 1, "threads": 2, "runs": runs, "total_seconds": 200.0}
    table = format_table(summary, ref)
    teacher_aps = [s["runs"]["teacher"]["AP"] for s in ref["seeds"].values()]
    m, sd = mean_sd(teacher_aps)
    row = [ln for ln in table.splitlines() if ln.startswith("| teacher |")][0]
    assert f"{m:.2f} ± {sd:.2f} (seed 1: {ref['seeds']['1']['runs']['teacher']['AP']:.2f})" in row
    assert "README reference AP" in table.splitlines()[0]
    note = reference_note(summary, ref)
    assert ref["command"] in note and "This run: 3.3 min, 2 threads" in note and "threads: 1 -> 2" in note


def test_the_demo_says_whether_its_figures_should_equal_the_reference():
    """Same device model, library versions and threads as the reference: its seed's figures should be equal; another
    CPU model (an AMD and an Intel CPU give other numbers for one command) or version: named, and a spread verdict."""
    from detrdistill.demo import reference_note
    from detrdistill.demo_reference import load_reference
    from detrdistill.machine import differences

    ref = load_reference()
    run = {"preset": ref["preset"], "seed": 0, "threads": ref["threads"], "device": ref["device"],
           "versions": dict(ref["versions"]), "total_seconds": 400.0,
           "runs": {r: dict(v, wall_seconds=100.0) for r, v in ref["seeds"]["0"]["runs"].items()}}
    assert differences(run, ref) == []
    assert "its seed's figures should be equal" in reference_note(run, ref)
    run["device"] = "Other CPU, 2 cores"
    run["versions"]["torch"] = "9.9.9"
    note = reference_note(run, ref)
    assert f"device: {ref['device']} -> Other CPU, 2 cores" in note and f"torch: {ref['versions']['torch']} -> 9.9.9" in note
    assert "expect other figures than its seed's" in note and "should be equal" not in note


def test_the_readme_demo_table_is_rendered_from_the_reference():
    """README.md and the details file are exactly what benchmarks/demo_table.py renders from the committed JSON."""
    from benchmarks.demo_table import main as demo_table
    assert demo_table(["--check"]) == 0


def test_an_idle_rerun_of_one_seed_is_recorded_beside_the_reference(tmp_path):
    """benchmarks/demo_table.py --idle: the rerun's wall time and load go beside the reference, and whether it gave
    that seed's figures; another thread count is refused. The README sentence and the demo's note say it."""
    import copy

    from benchmarks.demo_table import idle_record
    from detrdistill.demo import reference_note
    from detrdistill.demo_reference import load_reference, readme_table

    ref = copy.deepcopy(load_reference())
    seed0 = ref["seeds"]["0"]["runs"]
    summary = {"seed": 0, "threads": ref["threads"], "preset": ref["preset"], "runs": copy.deepcopy(seed0)}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rec = idle_record(tmp_path, 420.0, "load average 0.05", "2026-12-04", ref)
    assert rec == {"seed": 0, "wall_seconds": 420.0, "load": "load average 0.05", "date": "2026-12-04",
                   "reproduced": True}
    summary["runs"]["distilled"]["AP"] += 0.01
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert idle_record(tmp_path, 420.0, "x", "2026-12-04", ref)["reproduced"] is False
    summary["threads"] = ref["threads"] + 1
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="threads"):
        idle_record(tmp_path, 420.0, "x", "2026-12-04", ref)
    ref["idle"] = rec
    assert "seed 0 took 7.0 min, its figures identical" in readme_table(ref, {r: r for r in seed0})
    run = {"preset": ref["preset"], "seed": 0, "threads": ref["threads"], "total_seconds": 400.0,
           "runs": {r: dict(v, wall_seconds=100.0) for r, v in seed0.items()}}
    assert "seed 0 took 7.0 min" in reference_note(run, ref)


def test_a_demo_reference_is_collected_from_runs_of_one_commit_and_machine(tmp_path):
    """benchmarks/demo_table.py --collect: the reference records the commit and device its seeds ran on, and refuses
    seeds made on different commits; the demo then names a commit that differs from the reference's."""
    from benchmarks.demo_table import code_line, collect
    from detrdistill.demo import reference_note
    from detrdistill.demo_reference import load_reference
    from detrdistill.machine import code_version, differences

    runs = {r: {"AP": 1.0, "AP50": 2.0, "AP75": 0.5, "params": 1000, "train_seconds": 60.0}
            for r in ("teacher", "baseline", "distilled")}
    code = {"commit": "a" * 40, "dirty": False, "diff_sha": None}
    dirs = []
    for seed in (0, 1):
        d = tmp_path / f"s{seed}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps({"seed": seed, "threads": 1, "preset": "cpu", "runs": runs,
                                                    "total_seconds": 300.0, "code": code, "device": "CPU X, 2 cores"}))
        dirs.append(d)
    ref = collect(dirs, None, "idle", "2026-12-06", "detrdistill demo --seed SEED")
    assert ref["code"] == code and ref["device"] == "CPU X, 2 cores" and set(ref["seeds"]) == {"0", "1"}
    assert code_line(ref["code"]) == "commit aaaaaaa" and "not recorded" in code_line(None)
    other = json.loads((dirs[1] / "summary.json").read_text())
    (dirs[1] / "summary.json").write_text(json.dumps({**other, "code": {**code, "commit": "b" * 40}}))
    with pytest.raises(SystemExit, match="one commit and machine"):
        collect(dirs, None, "idle", "2026-12-06", "detrdistill demo --seed SEED")
    (dirs[1] / "summary.json").write_text(json.dumps({**other, "versions": {"torch": "9.9.9"}}))
    with pytest.raises(SystemExit, match="versions"):  # the seeds' own library versions, not the collector's
        collect(dirs, None, "idle", "2026-12-06", "detrdistill demo --seed SEED")
    here = {"code": {**code, "commit": "c" * 40}, "device": ref["device"], "threads": 1}
    assert differences(here, ref) == ["commit: aaaaaaa -> ccccccc"]
    assert differences({"device": "d"}, {**ref, "device": "d"}) == []  # a reference without a commit: not compared
    assert set(code_version()) == {"commit", "dirty", "diff_sha"}
    real = load_reference()
    run = {"preset": real["preset"], "seed": 0, "threads": real["threads"], "device": real["device"],
           "versions": real["versions"], "code": here["code"], "total_seconds": 1.0,
           "runs": {r: dict(v, wall_seconds=1.0) for r, v in real["seeds"]["0"]["runs"].items()}}
    assert "commit:" in reference_note(run, {**real, "code": code})
    assert "commit:" not in reference_note(run, {**real, "code": here["code"]})  # the reference's own commit


def test_the_code_version_is_only_this_checkouts(monkeypatch):
    """A package installed inside another git repository (a venv in a user's project) reports no commit, not that
    repository's; from its own checkout it reports the checkout's HEAD."""
    import subprocess

    from detrdistill import machine

    root = machine.SOURCE_ROOT
    if not (root / ".git").exists():
        pytest.skip("not a git checkout")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
    machine.code_version.cache_clear()
    try:
        assert machine.code_version()["commit"] == head
        monkeypatch.setattr(machine, "SOURCE_ROOT", root / "detrdistill")  # inside the repository, not its top
        machine.code_version.cache_clear()
        assert machine.code_version() == {"commit": "unknown", "dirty": False, "diff_sha": None}
    finally:
        monkeypatch.undo()
        machine.code_version.cache_clear()
