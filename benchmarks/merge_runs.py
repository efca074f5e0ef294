"""Bring the runs another copy of a results file holds into this one (e.g. runs made in a worktree pinned to the
file's commit, or on a second machine), then re-render its report and chart.

    python benchmarks/merge_runs.py WORKTREE/benchmarks/results/NAME.json benchmarks/results/NAME.json

This file's header (teacher record, notes, device) is kept: a baseline-only invocation in a worktree knows no teacher
and an older commit's header may lack fields. From the other copy come its runs that this file lacks (by method and
seed), its dates, the invocations it adds to the command history, its ``baseline_long`` record and its main teacher's
record when this file has none, and the records of teacher variants (``teachers``: the teachers of ``M@NAME`` runs)
this file lacks. Refused, with nothing written: files of another dataset or student config, a ``baseline_long`` record that
differs from this file's, a run both files hold with different results, or (unless ``--allow-mixed``) a new run made
in another environment than this file's runs (commit, versions, device: ``benchmarks/run_env.py``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/merge_runs.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import results_file, run_env  # noqa: E402
from benchmarks.distill_report import save_with_report  # noqa: E402
from benchmarks.runner import BenchmarkError  # noqa: E402


def merged(into: dict, other: dict, allow_mixed: bool = False) -> tuple[dict, list[dict]]:
    """``into`` with ``other``'s new runs (and what comes with them); the runs added."""
    for key in ("dataset", "report_split"):
        if into.get(key) != other.get(key):
            raise BenchmarkError(f"{key}: {into.get(key)!r} here, {other.get(key)!r} in the other file")
    if (into.get("student") or {}).get("config") != (other.get("student") or {}).get("config"):
        raise BenchmarkError("the two files train different student configs")
    if into.get("baseline_long") and other.get("baseline_long") and into["baseline_long"] != other["baseline_long"]:
        raise BenchmarkError(f"baseline_long: {into['baseline_long']} here, {other['baseline_long']} in the other "
                             "file; runs of two schedule lengths cannot share a method name")
    have = {results_file.run_key(r): r for r in into["runs"]}
    for r in other["runs"]:
        mine = have.get(results_file.run_key(r))
        if mine is not None and mine.get("AP") != r.get("AP"):
            raise BenchmarkError(f"{r['method']} seed {r['seed']}: AP {mine.get('AP')} here, {r.get('AP')} in the "
                                 "other file; keep one (delete the other from its file) first")
    new = [r for r in other["runs"] if results_file.run_key(r) not in have]
    envs = {run_env.environment_key(r.get("env")) for r in into["runs"]}
    alien = [r for r in new if envs and run_env.environment_key(r.get("env")) not in envs]
    if alien and not allow_mixed:
        r = alien[0]
        raise BenchmarkError(f"{r['method']} seed {r['seed']} was made in {run_env.describe(r.get('env'))}, not in "
                             f"this file's environment ({run_env.describe(into['runs'][0].get('env'))}); a file "
                             "holds one comparison: pass --allow-mixed to add it anyway (the report shows the mix)")
    # this file's header; the other copy's new runs, their dates and its command history (results_file.merge)
    header = {**{k: v for k, v in into.items() if k != "runs"}, "command": other.get("command"),
              "dates": [r["date"] for r in new if r.get("date")]}
    if other.get("baseline_long") and not into.get("baseline_long"):
        header["baseline_long"] = other["baseline_long"]
    if other.get("teacher") and not into.get("teacher"):
        header["teacher"] = other["teacher"]
    # a variant's record is written where its runs were made; this file's own records win
    header["teachers"] = {**(other.get("teachers") or {}), **(into.get("teachers") or {})}
    out = results_file.merge(into, header, new)
    return out, new


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("other", type=Path, help="the copy holding the runs to bring in")
    p.add_argument("into", type=Path, help="the results file to extend (its .md and .png are re-rendered); when it "
                                           "does not exist yet, the other copy is written there")
    p.add_argument("--allow-mixed", action="store_true", help="add runs made in another environment")
    args = p.parse_args(argv)
    try:
        with results_file.locked(args.into):
            into, other = results_file.read(args.into), results_file.read(args.other)
            if other is None:
                raise BenchmarkError(f"{args.other}: no such results file")
            # a file not in this checkout yet (its first runs made in a worktree) is the other copy as it is
            results, new = merged(into, other, args.allow_mixed) if into is not None else (other, other["runs"])
            save_with_report(args.into, results)
    except (BenchmarkError, json.JSONDecodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.into}: {len(new)} run(s) added: " + ", ".join(f"{r['method']} s{r['seed']}" for r in new))
    return 0


if __name__ == "__main__":
    sys.exit(main())
