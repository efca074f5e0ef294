"""`detrdistill demo` pipeline (smoke preset: seconds): three runs, comparison table, figures, reuse."""
import json

from detrdistill.cli import main


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
