"""Each real-time family trained its own way (``loss.recipe: family``) against the project's set criterion
(``loss.recipe: set``): one row per family from the results files of ``benchmarks/distill.py --methods baseline
baseline_set`` (the student alone under each recipe, equal steps, paired seeds), rendered into the README block.

    python benchmarks/recipe_table.py benchmarks/results/recipe-synthetic-*-2026-12-04.json          # print
    python benchmarks/recipe_table.py --readme benchmarks/results/recipe-synthetic-*-2026-12-04.json # rewrite
    python benchmarks/recipe_table.py --check    # exit 1 when the block is not what the files it links to render
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/recipe_table.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks.readme_block import ResultsBlock, report_link  # noqa: E402
from benchmarks.results_file import ap_by_seed, family  # noqa: E402
from benchmarks.stats import mean_sd, paired_gain  # noqa: E402

README = ROOT / "README.md"
BEGIN, END = "<!-- recipe-table:begin (benchmarks/recipe_table.py) -->", "<!-- recipe-table:end -->"
OWN, SET = "baseline", "baseline_set"  # the student alone under loss.recipe family / set


def _seconds(results: dict, method: str) -> float | None:
    xs = [r["train_seconds"] for r in results["runs"] if r["method"] == method and r.get("train_seconds")]
    return sum(xs) / len(xs) if xs else None


def row(results: dict, link: str) -> str:
    """One markdown row: family, paired seeds, AP under each recipe (mean ± sd), the gain of the family's own
    recipe with its 95 % t-interval, training seconds per run under each, the file."""
    own, set_ = ap_by_seed(results, OWN), ap_by_seed(results, SET)
    if not own or not set_:
        raise SystemExit(f"{link}: needs runs of both {OWN!r} and {SET!r} (has {sorted({r['method'] for r in results['runs']})})")
    seeds = sorted(set(own) & set(set_))
    (m_own, s_own), (m_set, s_set) = mean_sd([own[s] for s in seeds]), mean_sd([set_[s] for s in seeds])
    gain = paired_gain(own, set_)
    t_own, t_set = _seconds(results, OWN), _seconds(results, SET)
    cost = f"{t_own:.0f} / {t_set:.0f}" if t_own and t_set else "n/a"
    return (f"| {family(results)} | {', '.join(map(str, seeds))} | **{m_own:.2f} ± {s_own:.2f}** | "
            f"{m_set:.2f} ± {s_set:.2f} | {gain} | {cost} | [file]({link}) |")


def render(files: list[Path]) -> str:
    """The README block: the table, one row per file in the order given."""
    rows = []
    for f in files:
        rows.append(row(json.loads(Path(f).read_text()), report_link(f, ROOT)))
    head = ("| student family | seeds | AP, own recipe (`family`) | AP, set criterion (`set`) | gain [95 % CI] | "
            "train s / run (family / set) | details |\n|---|---|---|---|---|---|---|")
    return head + "\n" + "\n".join(rows)


TABLE = ResultsBlock(__doc__, README, BEGIN, END, render)

if __name__ == "__main__":
    sys.exit(TABLE.main())
