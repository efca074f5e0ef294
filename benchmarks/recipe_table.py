"""Each real-time family trained its own way (``loss.recipe: family``) against the project's set criterion
(``loss.recipe: set``): one row per family from the results files of ``benchmarks/distill.py --methods baseline
baseline_set`` (the student alone under each recipe, equal steps, paired seeds), rendered into the README block.

    python benchmarks/recipe_table.py benchmarks/results/recipe-synthetic-*-2026-12-04.json          # print
    python benchmarks/recipe_table.py --readme benchmarks/results/recipe-synthetic-*-2026-12-04.json # rewrite
    python benchmarks/recipe_table.py --check    # exit 1 when the block is not what the files it links to render
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/recipe_table.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.readme_block import read_block, with_block  # noqa: E402
from benchmarks.stats import mean_sd, paired_gain  # noqa: E402
from detrdistill.io_atomic import write_atomic  # noqa: E402

README = ROOT / "README.md"
BEGIN, END = "<!-- recipe-table:begin (benchmarks/recipe_table.py) -->", "<!-- recipe-table:end -->"
OWN, SET = "baseline", "baseline_set"  # the student alone under loss.recipe family / set


def _ap_by_seed(results: dict, method: str) -> dict[int, float]:
    return {r["seed"]: r["AP"] for r in results["runs"] if r["method"] == method}


def _seconds(results: dict, method: str) -> float | None:
    xs = [r["train_seconds"] for r in results["runs"] if r["method"] == method and r.get("train_seconds")]
    return sum(xs) / len(xs) if xs else None


def family_of_file(results: dict) -> str:
    """The student's family: ``model.family`` of the student config the results file records, else its name."""
    import yaml

    config = Path((results.get("student") or {}).get("config", "?"))
    path = config if config.is_absolute() else ROOT / config
    if path.is_file():
        family = ((yaml.safe_load(path.read_text()) or {}).get("model") or {}).get("family")
        if family:
            return family
    return config.stem


def row(results: dict, link: str) -> str:
    """One markdown row: family, paired seeds, AP under each recipe (mean ± sd), the gain of the family's own
    recipe with its 95 % t-interval, training seconds per run under each, the file."""
    own, set_ = _ap_by_seed(results, OWN), _ap_by_seed(results, SET)
    if not own or not set_:
        raise SystemExit(f"{link}: needs runs of both {OWN!r} and {SET!r} (has {sorted({r['method'] for r in results['runs']})})")
    seeds = sorted(set(own) & set(set_))
    (m_own, s_own), (m_set, s_set) = mean_sd([own[s] for s in seeds]), mean_sd([set_[s] for s in seeds])
    gain = paired_gain(own, set_)
    t_own, t_set = _seconds(results, OWN), _seconds(results, SET)
    cost = f"{t_own:.0f} / {t_set:.0f}" if t_own and t_set else "n/a"
    return (f"| {family_of_file(results)} | {', '.join(map(str, seeds))} | **{m_own:.2f} ± {s_own:.2f}** | "
            f"{m_set:.2f} ± {s_set:.2f} | {gain} | {cost} | [file]({link}) |")


def render(files: list[Path]) -> str:
    """The README block: the table, one row per file in the order given."""
    rows = []
    for f in files:
        results = json.loads(Path(f).read_text())
        rows.append(row(results, Path(f).resolve().relative_to(ROOT).with_suffix(".md").as_posix()))
    head = ("| student family | seeds | AP, own recipe (`family`) | AP, set criterion (`set`) | gain [95 % CI] | "
            "train s / run (family / set) | details |\n|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


def files_in_readme(text: str) -> list[Path]:
    """The results files the README block renders (its ``[file](...md)`` links, as ``.json``)."""
    import re

    return [ROOT / Path(m).with_suffix(".json")
            for m in re.findall(r"\[file\]\(([^)]+\.md)\)", read_block(text, BEGIN, END))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", type=Path, help="results JSON files, one per family (--check: the README's)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--readme", action="store_true", help="rewrite the README block")
    mode.add_argument("--check", action="store_true", help="exit 1 when the README block is not what the files render")
    args = ap.parse_args(argv)
    text = README.read_text()
    files = args.files or (files_in_readme(text) if args.check else [])
    if not files:
        ap.error("name the results files")
    table = render(files)
    if not (args.readme or args.check):
        print(table)
        return 0
    want = with_block(text, BEGIN, END, table)
    if args.check:
        if want != text:
            print("README recipe table is stale: run python benchmarks/recipe_table.py --readme FILES", file=sys.stderr)
            return 1
        return 0
    write_atomic(README, want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
