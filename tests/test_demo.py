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
    assert "| distilled |" in printed and "figures:" in printed
    # a second call reuses the finished runs instead of training again
    mtime = (out / "teacher" / "model" / "config.json").stat().st_mtime
    assert main(["demo", "--preset", "smoke", "--output-dir", str(out)]) == 0
    assert "reusing" in capsys.readouterr().out
    assert (out / "teacher" / "model" / "config.json").stat().st_mtime == mtime
