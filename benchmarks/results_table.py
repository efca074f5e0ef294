"""The README's headline results: one row per results file of ``benchmarks/distill.py`` (one dataset, one teacher,
one student), every run of the file made on one commit and environment, rendered into the README block.

    python benchmarks/results_table.py benchmarks/results/bccd-cpu-2026-12-04.json            # print
    python benchmarks/results_table.py --readme benchmarks/results/bccd-cpu-2026-12-04.json   # rewrite the block
    python benchmarks/results_table.py --check    # exit 1 when the block is not what the files it links to render

Per method: mean ± std over its seeds (and how many). Gains are paired by seed (same initialisation and data order)
with a 95 % t-interval (``benchmarks/stats.py``): DETRDistill, FitNet and logit KD over the student alone, and
DETRDistill over the equal-cost control (``baseline_long``: the student alone for as long as a DETRDistill run costs), when the file has it.
A file whose runs come from several commits or environments is refused: it is not one comparison. A file made with
overrides (``--set`` / ``--student-set``, other than display ones) names them after its pair.

A file without plain ``detrdistill`` runs but with one variant of the full method (``detrdistill_quality_warmup``...)
shows that variant in the DETRDistill column, named in its label.

``FILE#NAME`` is the row of the file's teacher variant ``NAME`` (``benchmarks/distill.py --teacher-variant``; e.g. a
teacher of another family into the same student): ``detrdistill@NAME`` against the same student alone. The other
methods and the equal-cost control were sized for the main teacher, so that row leaves them out. When ``NAME`` is
not a teacher variant but a method of the file (``detrdistill_quality_warmup_stop50``), the row is that method in the
DETRDistill column (a file may hold several variants of the full method), with the other methods; the equal-cost
control only when it was sized from that method.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/results_table.py` from anywhere
    sys.path.insert(0, str(ROOT))

from benchmarks import run_env  # noqa: E402
from benchmarks.readme_block import ResultsBlock, report_link  # noqa: E402
from benchmarks.results_file import FULL_METHOD, ap_by_seed, family, full_method  # noqa: E402
from benchmarks.stats import mean_sd, paired_gain  # noqa: E402

README = ROOT / "README.md"
BEGIN, END = "<!-- results-table:begin (benchmarks/results_table.py) -->", "<!-- results-table:end -->"
ALONE, DISTILLED, EQUAL_COST = "baseline", FULL_METHOD, "baseline_long"
OTHERS = ("fitnet", "logit_kd")  # the other distillation baselines, shown when the file has them
HEAD = ("| dataset (split): teacher → student | steps | teacher | student alone | DETRDistill | gain [95 % CI] | "
        "FitNet; gain [95 % CI] | logit KD; gain [95 % CI] | "
        "alone, equal cost | DETRDistill vs equal cost [95 % CI] | code, machine | details |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _cell(aps: dict[int, float]) -> str:
    if not aps:
        return "—"
    m, sd = mean_sd(list(aps.values()))
    return f"{m:.2f} ± {sd:.2f} (n={len(aps)})" if len(aps) > 1 else f"{m:.2f} (n=1)"


def _with_gain(aps: dict[int, float], alone: dict[int, float]) -> str:
    """A baseline method's cell: its mean ± std and its gain over the student alone, paired by seed."""
    return f"{_cell(aps)}; {paired_gain(aps, alone)}" if aps else "—"


def _mean(aps: dict[int, float]) -> float:
    return mean_sd(list(aps.values()))[0]


def _bold_the_better(alone: str, distilled: str, distilled_better: bool) -> tuple[str, str]:
    return (alone, f"**{distilled}**") if distilled_better else (f"**{alone}**", distilled)


def one_environment(results: dict, link: str) -> str:
    """The short commit and the device every run of the file was made on; SystemExit when the runs come from
    several."""
    keys = {run_env.environment_key(r.get("env")) for r in results["runs"]}
    envs = [r.get("env") for r in results["runs"]]
    if not envs or any(not e or not e.get("commit") for e in envs):
        raise SystemExit(f"{link}: a run records no commit (made before runs were pinned); rerun it on one commit")
    if len(keys) > 1:
        raise SystemExit(f"{link}: its runs come from {len(keys)} commits/environments; the README's rows are "
                         "comparisons made on one (see the file's environment lines)")
    return envs[0]["commit"][:7] + (" (dirty)" if envs[0].get("dirty") else "") + \
        f", {run_env.short_device(envs[0].get('device'))}"


#: overrides that change how a run is shown or fed, not what it trains: left out of a row's label
COSMETIC = ("train.progress", "data.num_workers", "data.cache_images")


def overrides(results: dict) -> list[str]:
    """The file's ``--set`` / ``--student-set`` overrides that change what its students train (shown in its row's
    label, so two files of one pair that differ by an override are told apart)."""
    given = results.get("overrides") or {}
    return [o for o in [*given.get("set", []), *given.get("student_set", [])]
            if o.split("=", 1)[0] not in COSMETIC]


def _sized(name: str, model: dict | None) -> str:
    """``name`` and the model's parameter count when the file records it (``d_fine 0.24 M``): two pairs of one
    family differ by their sizes."""
    params = (model or {}).get("params")
    if not params:
        return name
    return f"{name} {params / 1e6:.1f} M" if params >= 1e6 else f"{name} {params / 1e6:.2f} M"


def row(results: dict, link: str, part: str | None = None) -> str:
    """One markdown row of a results file (``link``: its ``.md``, relative to the README); ``part``: the row of that
    teacher variant instead of the main teacher, or of that method of the file in the DETRDistill column."""
    methods = sorted({r["method"] for r in results["runs"]})
    method = part if part is not None and part not in (results.get("teachers") or {}) else None
    variant = part if method is None else None
    if method is not None and method not in methods:
        raise SystemExit(f"{link}#{part}: neither a teacher variant ({sorted(results.get('teachers') or {})}) nor "
                         f"a method of the file ({methods})")
    distilled_method = method or (full_method(results) if variant is None else f"{DISTILLED}@{variant}")
    alone, distilled = ap_by_seed(results, ALONE), ap_by_seed(results, distilled_method)
    if not alone or not distilled:
        several = [m for m in methods if m.startswith(DISTILLED + "_")] if method is None else []
        hint = f"; a file with several variants needs one named: {link}#METHOD" if len(several) > 1 else ""
        raise SystemExit(f"{link}: needs runs of both {ALONE!r} and {distilled_method!r} (has {methods}){hint}")
    commit = one_environment(results, link)
    steps = sorted({r.get("steps") for r in results["runs"] if r["method"] in (ALONE, distilled_method)},
                   key=lambda s: (s is None, s))
    if len(steps) != 1:
        raise SystemExit(f"{link}: {ALONE} and {distilled_method} ran unequal step counts {steps}")
    teacher = (results.get("teacher") if variant is None else results.get("teachers", {}).get(variant)) or {}
    pair = f"{_sized(family(results, 'teacher') if variant is None else variant, teacher)} → " \
           f"{_sized(family(results), results.get('student'))}"
    changed = overrides(results) + ([f"method {distilled_method}"] if distilled_method != DISTILLED and variant is None
                                     else [])
    if changed:
        pair += f" ({', '.join(changed)})"
    others = [ap_by_seed(results, m) if variant is None else {} for m in OTHERS]
    sized_from = (results.get(EQUAL_COST) or {}).get("from")
    # a row of one method among several: the control is this row's only when not sized from another method's cost
    long = ap_by_seed(results, EQUAL_COST) if variant is None and (
        method is None or sized_from == method or sized_from not in methods) else {}
    long_steps = (results.get(EQUAL_COST) or {}).get("steps")
    vs_long = paired_gain(distilled, long) if long else None
    gain = paired_gain(distilled, alone)
    # the better arm by the paired gain (the seeds both ran), not by means over different seed sets
    distilled_better = gain.mean >= 0 if gain is not None else _mean(distilled) >= _mean(alone)
    return " | ".join([
        f"| {results['dataset']} ({results.get('report_split')}): {pair}", str(steps[0]),
        f"{teacher['AP']:.2f}" if "AP" in teacher else "—", *_bold_the_better(_cell(alone), _cell(distilled),
                                                                         distilled_better),
        str(gain), *(_with_gain(o, alone) for o in others),
        _cell(long) + (f", {long_steps} steps" if long and long_steps else ""),
        str(vs_long) if vs_long else "—", commit, f"[file]({link}{'#' + part if part else ''}) |"])


def render(files: list[Path]) -> str:
    """The README block: the table, one row per file (``FILE#NAME``: its teacher variant or method NAME) in the order
    given."""
    rows = []
    for f in files:
        path, _, part = str(f).partition("#")
        rows.append(row(json.loads(Path(path).read_text()), report_link(Path(path), ROOT), part or None))
    return HEAD + "\n" + "\n".join(rows)


TABLE = ResultsBlock(__doc__, README, BEGIN, END, render)

if __name__ == "__main__":
    sys.exit(TABLE.main())
