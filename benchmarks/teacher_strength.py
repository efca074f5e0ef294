"""Student AP against teacher AP, from one results file of benchmarks/distill.py with teacher variants.

    python benchmarks/teacher_strength.py benchmarks/results/bccd-cpu-2026-12-04.json --method detrdistill

Each teacher of the file (the main one, ``teacher``, and every variant that a ``<method>@<variant>`` run used) is one
point: its AP on the reported split against the mean ± std AP of the students it taught with ``--method``. The
student alone is a horizontal line (mean, ± std band), and so is the student alone at equal cost (``baseline_long``)
where the file has it. Writes ``<file>-teacher-strength.png`` and ``.md`` beside the results file (the table gives
the gain over the student alone with its 95 % t-interval over the paired seeds; the strongest teacher's students
against the self-distillation control's, ``baseline:SEED``, and against the student alone at equal cost, paired the
same way; and whether the curve rises: the slope of student AP over teacher AP, fitted per seed, with its t-interval
over seeds), and prints the table.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import results_file  # noqa: E402
from benchmarks.stats import Gain, mean_sd, paired_gain  # noqa: E402


def points(results: dict, method: str) -> list[dict]:
    """One row per teacher that taught ``method``: name, spec, teacher AP, the students' APs by seed."""
    teachers = {"teacher": {**results.get("teacher", {}), "spec": "main"}, **results.get("teachers", {})}
    rows = []
    for name, t in teachers.items():
        run_name = method if name == "teacher" else f"{method}@{name}"
        by_seed = results_file.ap_by_seed(results, run_name)
        if by_seed and "AP" in t:
            rows.append({"teacher": name, "spec": t.get("spec", ""), "teacher_AP": t["AP"],
                         "steps": t.get("steps"), "students": by_seed})
    return sorted(rows, key=lambda r: r["teacher_AP"])


def table(results: dict, method: str, rows: list[dict]) -> str:
    base = results_file.ap_by_seed(results, "baseline")
    bm, bsd = mean_sd(list(base.values())) if base else (float("nan"), 0.0)
    lines = [f"# Teacher strength: {results['dataset']} ({results.get('report_split')}), {method}", "",
             f"student alone: {bm:.2f} ± {bsd:.2f} ({len(base)} seeds). Gain: mean of the per-seed differences "
             "with its 95 % t-interval (benchmarks/stats.py).", "",
             f"command: `python benchmarks/teacher_strength.py <results file> --method {method}`; runs: "
             f"`{results.get('command', '')}`", "",
             "| teacher | what | teacher steps | teacher AP | student AP (mean ± std) | seeds | gain vs alone [95 % CI] |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        m, sd = mean_sd(list(r["students"].values()))
        g = paired_gain(r["students"], base)
        lines.append(f"| {r['teacher']} | {r['spec']} | {r['steps'] if r['steps'] is not None else 'n/a'} | "
                     f"{r['teacher_AP']:.2f} | {m:.2f} ± {sd:.2f} | {len(r['students'])} | {g if g else ''} |")
    control = over_control(rows)
    if control:
        strongest, self_row, g = control
        lines += ["", f"Strongest teacher ({strongest['teacher']}, {strongest['teacher_AP']:.2f}) − self-distillation "
                      f"control ({self_row['teacher']}, {self_row['teacher_AP']:.2f}), paired by seed: {g}."]
    long = over_equal_cost(results, rows)
    if long:
        strongest, steps, (lm, lsd, n), g = long
        lines += ["", f"Student alone at equal cost (`baseline_long`, {steps} steps): {lm:.2f} ± {lsd:.2f} "
                      f"({n} seeds). Strongest teacher ({strongest['teacher']}, {strongest['teacher_AP']:.2f}) − it, "
                      f"paired by seed: {g if g else 'no common seed'}."]
    slope = rise(rows)
    if slope:
        lines += ["", f"Rise: student AP per teacher AP point over the {sum(not is_self(r) for r in rows)} teachers of "
                      f"the design (least squares per seed, mean over "
                      f"{slope.n} seed{'s' if slope.n != 1 else ''}): {slope}."]
    return "\n".join(lines) + "\n"


def strongest_teacher(rows: list[dict]) -> dict | None:
    """The row of the strongest teacher of the teacher's design (the self-distillation control left out); None when
    there is none."""
    return max((r for r in rows if not is_self(r)), key=lambda r: r["teacher_AP"], default=None)


def over_control(rows: list[dict]):
    """``(strongest teacher's row, the self-distillation control's row, gain)``: the students of the strongest teacher
    of the teacher's design against those of a student-alone model, paired by seed; None when either is missing."""
    strongest = strongest_teacher(rows)
    controls = [r for r in rows if is_self(r)]
    if strongest is None or not controls:
        return None
    control = controls[0]
    g = paired_gain(strongest["students"], control["students"])
    return (strongest, control, g) if g else None


def over_equal_cost(results: dict, rows: list[dict]):
    """``(strongest teacher's row, steps, (mean, std, seeds) of the student alone at equal cost, gain)``: the
    students of the strongest teacher of the design against ``baseline_long`` (the student alone trained for the CPU
    time of a distilled run), paired by seed (gain None without a common seed); None when the file has no
    ``baseline_long`` runs or no teacher of the design."""
    long = results_file.ap_by_seed(results, "baseline_long")
    strongest = strongest_teacher(rows)
    if not long or strongest is None:
        return None
    steps = (results.get("baseline_long") or {}).get("steps", "n/a")
    return strongest, steps, (*mean_sd(list(long.values())), len(long)), paired_gain(strongest["students"], long)


def rise(rows: list[dict]) -> Gain | None:
    """Does the curve rise? The least-squares slope of student AP over teacher AP across the teachers of the design
    (the control left out), fitted on each seed that every one of them taught (the same seed: the same student
    initialisation and data order, so the seeds pair as in ``paired_gain``), with the t-interval of the per-seed
    slopes; None with fewer than 2 such teachers of distinct AP or no common seed."""
    ours = [r for r in rows if not is_self(r)]
    xs = [r["teacher_AP"] for r in ours]
    seeds = sorted(set.intersection(*(set(r["students"]) for r in ours))) if ours else []
    if len(set(xs)) < 2 or not seeds:
        return None
    slopes = {s: float(np.polyfit(xs, [r["students"][s] for r in ours], 1)[0]) for s in seeds}
    return paired_gain(slopes, dict.fromkeys(seeds, 0.0))


def is_self(row: dict) -> bool:
    """A point whose teacher is a student-alone model (``baseline:SEED``): the self-distillation control."""
    return str(row.get("spec", "")).startswith("baseline:")


def chart(results: dict, method: str, rows: list[dict]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base = [r["AP"] for r in results["runs"] if r["method"] == "baseline"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    if base:
        bm, bsd = mean_sd(base)
        ax.axhline(bm, color="grey", ls="--", label=f"student alone ({len(base)} seeds)")
        ax.axhspan(bm - bsd, bm + bsd, color="grey", alpha=0.15)
    long = [r["AP"] for r in results["runs"] if r["method"] == "baseline_long"]
    if long:  # what the student alone reaches for the CPU time of a distilled run
        lm, lsd = mean_sd(long)
        ax.axhline(lm, color="tab:green", ls="-.", label=f"student alone at equal cost ({len(long)} seeds)")
        ax.axhspan(lm - lsd, lm + lsd, color="tab:green", alpha=0.10)
    xs = [r["teacher_AP"] for r in rows]
    stats = [mean_sd(list(r["students"].values())) for r in rows]
    # the curve joins the teachers of the teacher's design (snapshots, the main one, longer ones); a student-alone
    # model as teacher (baseline:SEED, the self-distillation control) is a point of its own
    for selfish, fmt, color, label in ((False, "o-", "tab:blue", f"student + {method} (mean ± std over seeds)"),
                                       (True, "s", "tab:orange", f"student + {method} from a student-alone model "
                                                                  "(self-distillation control)")):
        part = [(x, st) for r, x, st in zip(rows, xs, stats) if is_self(r) == selfish]
        if part:
            ax.errorbar([x for x, _ in part], [m for _, (m, _) in part], yerr=[sd for _, (_, sd) in part], fmt=fmt,
                        color=color, capsize=4, label=label)
    for r, (m, _) in zip(rows, stats):
        ax.annotate(r["teacher"], (r["teacher_AP"], m), textcoords="offset points", fontsize=8,
                    xytext=(4, -12) if is_self(r) else (4, 6))  # the control below: it often sits by a snapshot
    ys = [m for m, _ in stats] + ([mean_sd(long)[0]] if long else [])
    lo, hi = min(xs + ys) - 2, max(xs + ys) + 2
    ax.plot([lo, hi], [lo, hi], color="tab:red", lw=0.8, ls=":", label="student = teacher")
    ax.set_xlabel(f"teacher AP ({results.get('report_split')})")
    ax.set_ylabel(f"student AP ({results.get('report_split')}, last checkpoint)")
    ax.set_title(f"{results['dataset']}: student AP against teacher AP", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, format="png")
    plt.close(fig)
    return buf.getvalue()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("results", help="a results JSON of benchmarks/distill.py")
    p.add_argument("--method", default="detrdistill")
    args = p.parse_args(argv)
    path = Path(args.results)
    results = results_file.read(path)
    if results is None:
        print(f"error: {path}: no such results file", file=sys.stderr)
        return 2
    rows = points(results, args.method)
    if not rows:
        print(f"error: {path}: no {args.method} runs with a recorded teacher AP", file=sys.stderr)
        return 2
    md = table(results, args.method, rows)
    stem = path.with_suffix("")
    results_file.write_atomic(stem.with_name(stem.name + "-teacher-strength.md"), md)
    results_file.write_atomic(stem.with_name(stem.name + "-teacher-strength.png"), chart(results, args.method, rows))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
