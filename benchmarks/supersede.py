"""Mark a results file of ``benchmarks/distill.py`` superseded by a rerun, keeping it (its runs stay readable).

    python benchmarks/supersede.py benchmarks/results/OLD.json --by benchmarks/results/NEW.json --why "what changed"

Sets ``superseded_by`` (the new file, relative to the repository) and ``superseded_why`` in the old JSON, and opens
its ``.md`` with a note linking the new file (replacing an earlier note; the rest of the report is left as it was
rendered). Both writes are atomic.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/supersede.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import results_file, run_env  # noqa: E402
from benchmarks.distill_report import superseded_banner  # noqa: E402


def _without_banner(text: str) -> str:
    if text.startswith("> **Superseded**"):
        return text.split("\n\n", 1)[1] if "\n\n" in text else ""
    return text


def supersede(old: Path, by: Path, why: str) -> None:
    """Record in ``old`` (a results JSON) that ``by`` replaces it, and why."""
    for f in (old, by):
        if not f.is_file():
            raise SystemExit(f"{f}: no such results file")
    if old.resolve() == by.resolve():
        raise SystemExit(f"{old}: a file cannot supersede itself")
    if not why.strip():
        raise SystemExit("--why: say what the rerun changes (a reader of the old file needs it)")
    results = json.loads(old.read_text())
    results["superseded_by"], results["superseded_why"] = run_env.relative(by), why.strip()
    results_file.write_atomic(old, results)
    md = old.with_suffix(".md")
    body = _without_banner(md.read_text()) if md.is_file() else ""
    results_file.write_atomic(md, superseded_banner(results) + body)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("old", type=Path, help="the results JSON a rerun replaces")
    ap.add_argument("--by", type=Path, required=True, help="the rerun's results JSON")
    ap.add_argument("--why", required=True, help="what the rerun changes, and what of the old file still stands")
    args = ap.parse_args(argv)
    supersede(args.old, args.by, args.why)
    return 0


if __name__ == "__main__":
    sys.exit(main())
