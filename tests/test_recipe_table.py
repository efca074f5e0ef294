"""benchmarks/recipe_table.py: the family-vs-set rows pair seeds, refuse a file without both arms, and the README's
block is exactly what the committed files it links to render."""
from __future__ import annotations

import pytest

from benchmarks import recipe_table


def _results(own: dict[int, float], set_: dict[int, float]) -> dict:
    runs = [{"method": "baseline", "seed": s, "AP": ap, "train_seconds": 10.0} for s, ap in own.items()]
    runs += [{"method": "baseline_set", "seed": s, "AP": ap, "train_seconds": 5.0} for s, ap in set_.items()]
    return {"student": {"config": "configs/synthetic_rt_detr_student.yaml"}, "runs": runs}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip("|").split("|")]


def test_row_pairs_seeds_and_gives_the_interval():
    # seed 2 ran only under `family`: it is left out of both means and of the gain
    line = recipe_table.row(_results({0: 10.0, 1: 12.0, 2: 50.0}, {0: 1.0, 1: 2.0}), "x.md")
    cells = _cells(line)
    assert cells[0] == "rt_detr"  # model.family of the recorded student config
    assert cells[1] == "0, 1"
    assert cells[2] == "**11.00 ± 1.41**" and cells[3] == "1.50 ± 0.71"
    assert cells[4].startswith("+9.50 [")  # paired differences 9 and 10, with a t-interval
    low, high = (float(x) for x in cells[4].split("[")[1].rstrip("]").split(","))
    assert low < 9.5 < high
    assert cells[5] == "10 / 5"
    # the other way round, the gain is negative
    assert _cells(recipe_table.row(_results({0: 1.0, 1: 2.0}, {0: 10.0, 1: 12.0}), "x.md"))[4].startswith("-9.50")


def test_row_refuses_a_file_without_both_arms():
    res = _results({0: 10.0}, {})
    with pytest.raises(SystemExit, match="baseline_set"):
        recipe_table.row(res, "benchmarks/results/x.md")


def test_readme_block_is_what_its_files_render():
    text = recipe_table.README.read_text()
    files = recipe_table.TABLE.files(text)
    assert files, "the README's recipe block links no results file"
    assert all(f.is_file() for f in files), files
    assert recipe_table.TABLE.main(["--check"]) == 0
