"""benchmarks/results_table.py: the headline rows pair seeds, give the gain over the student alone and over the
equal-cost control with intervals, refuse a file that is not one comparison on one commit, and the README's block is
exactly what the committed files it links to render."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import results_table
from benchmarks.readme_block import linked_results
from benchmarks.results_file import family

ENV = {"commit": "0123456789abcdef", "dirty": False, "python": "3.11.7", "torch": "2.13.0", "transformers": "5.25.0",
       "accelerate": "1.16.0", "device": "cpu", "threads": 1}


def _results(runs: dict[str, dict[int, float]], env=ENV, steps=None) -> dict:
    steps = steps or {}
    return {"dataset": "bccd", "report_split": "test", "teacher": {"AP": 44.0, "config": "configs/cpu/bccd_teacher.yaml"},
            "student": {"config": "configs/cpu/bccd_student.yaml"}, "baseline_long": {"steps": 6000},
            "runs": [{"method": m, "seed": s, "AP": ap, "steps": steps.get(m, 2400), "env": dict(env)}
                     for m, by_seed in runs.items() for s, ap in by_seed.items()]}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_row_gives_means_paired_gains_and_the_commit():
    res = _results({"baseline": {0: 40.0, 1: 42.0, 2: 41.0}, "detrdistill": {0: 45.0, 1: 46.0, 2: 45.5},
                    "baseline_long": {0: 47.0, 1: 46.0}, "fitnet": {0: 43.0}}, steps={"baseline_long": 6000})
    cells = _cells(results_table.row(res, "x.md"))
    assert cells[0] == "bccd (test): deformable_detr → deformable_detr"
    assert cells[1] == "2400" and cells[2] == "44.00"
    assert cells[3] == "41.00 ± 1.00 (n=3)" and cells[4] == "**45.50 ± 0.50 (n=3)**"
    gain = cells[5]
    assert gain.startswith("+4.50 [")  # paired differences 5, 4, 4.5
    low, high = (float(x) for x in gain.split("[")[1].rstrip("]").split(","))
    assert 0 < low < 4.5 < high
    assert cells[6] == "43.00 (n=1); +3.00 (n=1, no interval)" and cells[7] == "—"  # FitNet one seed, logit KD none
    assert cells[8] == "46.50 ± 0.71 (n=2), 6000 steps"
    assert cells[9].startswith("-1.00 [")  # DETRDistill - equal cost over seeds 0, 1: -2.0, 0.0
    assert cells[10] == "0123456, cpu"  # the commit and the machine of every run


def test_row_names_the_overrides_that_change_training():
    res = _results({"baseline": {0: 40.0}, "detrdistill": {0: 41.0}})
    res["overrides"] = {"set": ["train.progress=false", "model.backbone.batch_norm=train"],
                        "student_set": ["distill.feature.weight=0.1"], "teacher_set": ["train.max_steps=9"]}
    label = _cells(results_table.row(res, "x.md"))[0]
    assert label == ("bccd (test): deformable_detr → deformable_detr "
                     "(model.backbone.batch_norm=train, distill.feature.weight=0.1)")


def test_a_file_of_one_full_method_variant_shows_it_as_detrdistill_and_names_it():
    res = _results({"baseline": {0: 40.0, 1: 41.0}, "detrdistill_quality_warmup": {0: 42.0, 1: 44.0}})
    cells = _cells(results_table.row(res, "x.md"))
    assert cells[0] == "bccd (test): deformable_detr → deformable_detr (method detrdistill_quality_warmup)"
    assert cells[4] == "**43.00 ± 1.41 (n=2)**" and cells[5].startswith("+2.50 [")
    two = _results({"baseline": {0: 40.0}, "detrdistill_no_logits": {0: 41.0}, "detrdistill_no_feature": {0: 41.0}})
    with pytest.raises(SystemExit, match="needs runs of both"):  # two variants: which one is the row is not clear
        results_table.row(two, "x.md")


def test_a_named_method_is_the_row_of_a_file_with_several_variants():
    """FILE#METHOD puts that method in the DETRDistill column; the equal-cost control shows only when it was sized
    from that method; a file of several variants without a name says how to name one."""
    res = _results({"baseline": {0: 40.0, 1: 41.0}, "detrdistill_quality_warmup": {0: 39.0, 1: 40.0},
                    "detrdistill_quality_warmup_stop50": {0: 43.0, 1: 44.0}, "baseline_long": {0: 42.0, 1: 42.0}},
                   steps={"baseline_long": 6000})
    res["baseline_long"] = {"steps": 6000, "from": "detrdistill_quality_warmup"}
    with pytest.raises(SystemExit, match="x.md#METHOD"):
        results_table.row(res, "x.md")
    stop = _cells(results_table.row(res, "x.md", "detrdistill_quality_warmup_stop50"))
    assert stop[0] == "bccd (test): deformable_detr → deformable_detr (method detrdistill_quality_warmup_stop50)"
    assert stop[4] == "**43.50 ± 0.71 (n=2)**" and stop[5].startswith("+3.00 [")
    assert stop[8:10] == ["—", "—"]  # sized from the other variant's cost: not this row's equal cost
    assert stop[11] == "[file](x.md#detrdistill_quality_warmup_stop50)"
    qw = _cells(results_table.row(res, "x.md", "detrdistill_quality_warmup"))
    assert qw[4] == "39.50 ± 0.71 (n=2)" and qw[8] == "42.00 ± 0.00 (n=2), 6000 steps" and qw[9].startswith("-2.50")


def test_row_names_each_model_size_when_recorded():
    res = _results({"baseline": {0: 40.0}, "detrdistill": {0: 41.0}})
    res["teacher"]["params"], res["student"]["params"] = 5_012_345, 236_653
    assert _cells(results_table.row(res, "x.md"))[0] == "bccd (test): deformable_detr 5.0 M → deformable_detr 0.24 M"


def test_the_better_arm_is_judged_on_the_seeds_both_ran():
    # the distilled seed 0 is below its student alone, although above the alone mean over seeds 0-1
    res = _results({"baseline": {0: 25.0, 1: 20.0}, "detrdistill": {0: 24.0}})
    cells = _cells(results_table.row(res, "x.md"))
    assert cells[3] == "**22.50 ± 3.54 (n=2)**" and cells[4] == "24.00 (n=1)"


def test_row_without_an_equal_cost_control_says_so():
    cells = _cells(results_table.row(_results({"baseline": {0: 1.0}, "detrdistill": {0: 2.0}}), "x.md"))
    assert cells[8] == "—" and cells[9] == "—" and cells[5] == "+1.00 (n=1, no interval)"
    worse = _cells(results_table.row(_results({"baseline": {0: 2.0}, "detrdistill": {0: 1.0}}), "x.md"))
    assert worse[3] == "**2.00 (n=1)**" and worse[4] == "1.00 (n=1)"  # the better arm is the bold one


def test_row_refuses_runs_from_two_commits():
    res = _results({"baseline": {0: 1.0, 1: 2.0}, "detrdistill": {0: 2.0, 1: 3.0}})
    res["runs"][-1]["env"]["commit"] = "fedcba9876543210"
    with pytest.raises(SystemExit, match="2 commits"):
        results_table.row(res, "benchmarks/results/x.md")


def test_row_refuses_unpinned_runs_unequal_steps_and_a_missing_arm():
    unpinned = _results({"baseline": {0: 1.0}, "detrdistill": {0: 2.0}})
    del unpinned["runs"][0]["env"]
    with pytest.raises(SystemExit, match="records no commit"):
        results_table.row(unpinned, "x.md")
    with pytest.raises(SystemExit, match="unequal step counts"):
        results_table.row(_results({"baseline": {0: 1.0}, "detrdistill": {0: 2.0}}, steps={"detrdistill": 1200}), "x.md")
    with pytest.raises(SystemExit, match="detrdistill"):
        results_table.row(_results({"baseline": {0: 1.0}}), "x.md")


def test_variant_row_is_that_teacher_against_the_same_student_alone(tmp_path, monkeypatch):
    res = _results({"baseline": {0: 40.0, 1: 42.0}, "detrdistill": {0: 30.0, 1: 31.0}, "fitnet": {0: 1.0},
                    "detrdistill@deformable": {0: 44.0, 1: 45.0}, "baseline_long": {0: 47.0}})
    res["teachers"] = {"deformable": {"spec": "dir:x", "AP": 50.0}}
    cells = _cells(results_table.row(res, "x.md", "deformable"))
    assert cells[0] == "bccd (test): deformable → deformable_detr"
    assert cells[2] == "50.00" and cells[4] == "**44.50 ± 0.71 (n=2)**" and cells[5].startswith("+3.50 [")
    assert cells[6:10] == ["—", "—", "—", "—"]  # sized for the main teacher: not this row's
    assert cells[11] == "[file](x.md#deformable)"
    with pytest.raises(SystemExit, match="neither a teacher variant"):
        results_table.row(res, "x.md", "other")
    # FILE#NAME on the command line renders that row, and the README's link reads back as the same part
    monkeypatch.setattr(results_table, "ROOT", tmp_path)
    (tmp_path / "r.json").write_text(json.dumps(res))
    block = results_table.render([tmp_path / "r.json", Path(f"{tmp_path / 'r.json'}#deformable")])
    assert linked_results(f"<b>\n{block}\n</e>", "<b>", "</e>", tmp_path) == [tmp_path / "r.json", tmp_path / "r.json#deformable"]


def test_readme_block_is_what_its_files_render():
    text = results_table.README.read_text()
    files = results_table.TABLE.files(text)
    assert files, "the README's results block links no results file"
    assert all(Path(str(f).partition("#")[0]).is_file() for f in files), files  # FILE#NAME: a part of FILE
    assert results_table.TABLE.main(["--check"]) == 0


def test_a_config_without_model_family_is_named_by_the_default_family(tmp_path):
    config = tmp_path / "synthetic_student.yaml"
    config.write_text("model:\n  d_model: 32\n")  # the synthetic configs name no family: deformable_detr
    named = tmp_path / "named.yaml"
    named.write_text("model:\n  family: d_fine\n")
    assert family({"student": {"config": str(config)}}) == "deformable_detr"
    assert family({"student": {"config": str(named)}}) == "d_fine"
    assert family({"student": {"config": "configs/not_here.yaml"}}) == "not_here"  # no file: its name


def test_a_missing_or_outside_results_file_is_named_not_a_traceback(tmp_path, capsys):
    outside = tmp_path / "r.json"
    outside.write_text("{}")
    for f, says in ((tmp_path / "nope.json", "no such results file"), (outside, "outside this repository"),
                    (Path(f"{tmp_path / 'nope.json'}#part"), "no such results file")):
        with pytest.raises(SystemExit) as stop:
            results_table.TABLE.main([str(f)])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and says in err and str(f).partition("#")[0] in err
