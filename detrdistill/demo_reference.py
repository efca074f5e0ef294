"""The demo's reference figures: one file, ``detrdistill/demo_reference.json``, read by ``detrdistill demo`` (printed
next to its own results) and rendered into the README's demo table by ``benchmarks/demo_table.py``.

The file holds each seed's results of ``detrdistill demo --preset cpu`` (AP / AP50 / AP75, parameters, training and
wall seconds), the command, thread count, date, machine and its load. Everything shown is derived here: the mean and
sample standard deviation over the seeds (:func:`reference_stats`), the README table (:func:`readme_table`) and the
demo's comparison column (:func:`reference_cells`).
"""
from __future__ import annotations

import json
import statistics
from importlib import resources

__all__ = ["REFERENCE_FILE", "RUN_ORDER", "load_reference", "reference_stats", "readme_table", "reference_cells",
           "idle_sentence",
           "mean_sd", "pm"]

REFERENCE_FILE = "demo_reference.json"
RUN_ORDER = ("teacher", "baseline", "distilled")
METRICS = ("AP", "AP50", "AP75")


def load_reference() -> dict | None:
    """The committed reference (None when the package was installed without it)."""
    try:
        return json.loads((resources.files("detrdistill") / REFERENCE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, OSError, ValueError):
        return None


def mean_sd(xs: list[float]) -> tuple[float, float]:
    return statistics.mean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def pm(xs: list[float], fmt: str = ".2f", sign: bool = False) -> str:
    """``mean ± sd`` of ``xs``."""
    m, s = mean_sd(xs)
    return f"{m:{'+' if sign else ''}{fmt}} ± {s:{fmt}}"


def reference_stats(ref: dict) -> dict:
    """{run: {metric: [per-seed values]}, "gain": [distilled - baseline AP per seed], "wall_min": [...],
    "params": {run: n}} over the reference's seeds (in seed order)."""
    seeds = [ref["seeds"][k] for k in sorted(ref["seeds"], key=int)]
    out: dict = {run: {m: [s["runs"][run][m] for s in seeds] for m in METRICS} for run in RUN_ORDER}
    out["gain"] = [s["runs"]["distilled"]["AP"] - s["runs"]["baseline"]["AP"] for s in seeds]
    out["wall_min"] = [s["wall_seconds"] / 60 for s in seeds]
    out["params"] = {run: seeds[0]["runs"][run]["params"] for run in RUN_ORDER}
    return out


def readme_table(ref: dict, names: dict[str, str]) -> str:
    """The README's demo table and the sentence that says how it was measured (markdown)."""
    st = reference_stats(ref)
    lines = ["| model | params | AP | AP50 | AP75 | AP vs student alone |", "|---|---|---|---|---|---|"]
    for run in RUN_ORDER:
        gain = pm(st["gain"], sign=True) if run == "distilled" else ""
        lines.append(f"| {names[run]} | {st['params'][run] / 1e6:.2f} M | " +
                     " | ".join(pm(st[run][m]) for m in METRICS) + f" | {gain} |")
    seeds = ", ".join(sorted(ref["seeds"], key=int))
    lines += ["", f"Mean ± standard deviation over seeds {seeds} of `{ref['command']}` ({ref['threads']} thread"
              f"{'s' if ref['threads'] != 1 else ''}, {ref['device']}, {ref['date']}; "
              f"[details]({ref['details']})). Wall time {pm(st['wall_min'], '.1f')} min per seed, measured on a shared, "
              f"loaded machine ({ref['load']})" + (f"; {idle_sentence(ref)}" if ref.get("idle") else
                                                   ": an idle one is faster.")]
    return "\n".join(lines)


def idle_sentence(ref: dict) -> str:
    """How long one seed took on the idle machine (``ref["idle"]``, written by ``benchmarks/demo_table.py --idle``),
    and whether it reproduced that seed's figures; "" when not measured."""
    idle = ref.get("idle")
    if not idle:
        return ""
    same = ("its figures identical to the seed's above" if idle["reproduced"] else
            "its figures differ from the seed's above (another environment)")
    return (f"on the idle machine ({idle['load']}, {idle['date']}) seed {idle['seed']} took "
            f"{idle['wall_seconds'] / 60:.1f} min, {same}.")


def reference_cells(ref: dict, seed: int | None) -> dict[str, str]:
    """{run: "mean ± sd (seed S: x)"} of AP, the column ``detrdistill demo`` prints beside its own AP."""
    st = reference_stats(ref)
    one = ref["seeds"].get(str(seed)) if seed is not None else None
    cells = {}
    for run in RUN_ORDER:
        cell = pm(st[run]["AP"])
        if run == "distilled":
            cell += f", gain {pm(st['gain'], sign=True)}"
        if one is not None:
            cell += f" (seed {seed}: {one['runs'][run]['AP']:.2f})"
        cells[run] = cell
    return cells
