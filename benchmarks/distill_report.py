"""Markdown table and figure of a distillation benchmark results file (see benchmarks/distill.py)."""
from __future__ import annotations

import io
import statistics
from pathlib import Path

from benchmarks import results_file, run_env
from benchmarks.stats import cost_clock, mean_sd, paired_gain


def _by_method(results: dict) -> dict[str, list[dict]]:
    by: dict[str, list[dict]] = {}
    for r in results["runs"]:
        by.setdefault(r["method"], []).append(r)
    return by


def _fmt_s(x) -> str:
    return "n/a" if x is None else f"{x:.0f}"


def environments(results: dict) -> list[str]:
    """One line per environment the file's runs were made in (one line when the comparison is on one commit)."""
    groups: dict[tuple, list[dict]] = {}
    for r in results["runs"]:
        groups.setdefault(run_env.environment_key(r.get("env")), []).append(r)
    if len(groups) <= 1:
        env = results["runs"][0].get("env") if results["runs"] else None
        return [f"environment (every run): {run_env.describe(env)}"]
    lines = [f"**MIXED: the runs come from {len(groups)} environments** (not one comparison on one commit):"]
    for rs in groups.values():
        who = ", ".join(f"{r['method']} s{r['seed']}" for r in rs)
        lines.append(f"- {run_env.describe(rs[0].get('env'))}: {who}")
    return lines


def _teacher_line(name: str, t: dict) -> str:
    spec = f" ({t['spec']})" if t.get("spec") else ""
    # a folder's teacher (dir:) was trained elsewhere: the config named is the one it was evaluated with
    where = (f"evaluated with {t.get('config')}" + (f", trained with {t['trained_config']}" if t.get("trained_config")
                                                    else "")) if str(t.get("spec", "")).startswith("dir:") \
        else t.get("config")
    return (f"- {name}{spec}: AP {t.get('AP', float('nan')):.2f}, {t.get('params', 0) / 1e6:.2f} M params, "
            f"{t.get('steps', 'n/a')} steps ({where}); trained in: {run_env.describe(t.get('env'))}")


def summarize(results: dict) -> str:
    """The file's Markdown report: header (device, schedule, environment, teachers, student, command, and the file's
    ``notes``: what its runs' records cannot say, e.g. runs brought in from another file), one row per method."""
    by = _by_method(results)
    base = by.get("baseline")
    base_by_seed = {r["seed"]: r["AP"] for r in base} if base else {}
    clock = cost_clock(results["runs"])
    base_s = statistics.mean(r[clock] for r in base) if base and all(r.get(clock) for r in base) else None
    t = results.get("teacher") or {}  # none when no method of the file distils
    steps = sorted({r.get("steps") for r in results["runs"] if r["method"] != "baseline_long"},
                   key=lambda s: (s is None, s))
    schedule = (f"{steps[0]} steps for every run" if len(steps) == 1
                else f"UNEQUAL step counts {steps}: not a valid comparison")
    if "baseline_long" in by:
        bl = results.get("baseline_long", {})
        sized = (f"the training time of {bl.get('from')} = {bl.get('cost_ratio')}x the baseline's"
                 if bl.get("cost_ratio") else f"given by {bl.get('from')}")
        schedule += (f" (baseline_long: {bl.get('steps')} steps, {sized}"
                     + (f"; {bl['why']}" if bl.get("why") else "") + ")")
    lines = [f"# Distillation benchmark: {results['dataset']}", "",
             f"device: {results['device']}; dates: {', '.join(results.get('dates', [results.get('date', '')]))}; "
             f"split reported: {results.get('report_split')}; schedule: {schedule}; "
             f"{results.get('parallel_runs') or 1} run(s) in parallel per invocation (invocations sharing the file "
             "add theirs), "
             f"{results.get('threads_per_run') or 'default'} torch thread(s) each", "",
             *environments(results), "",
             "teachers:" if t or results.get("teachers") else "teachers: none (no method here distils)",
             *([_teacher_line("teacher", t)] if t else []),
             *[_teacher_line(n, v) for n, v in results.get("teachers", {}).items()], "",
             f"student: {results['student'].get('params', 0) / 1e6:.2f} M params ({results['student'].get('config')})",
             "", f"command: `{results['command']}`", "",
             *([*(f"note: {n}" for n in results["notes"]), ""] if results.get("notes") else []),
             "gain vs baseline: mean of the per-seed differences with its 95 % t-interval over the seeds both ran "
             "(benchmarks/stats.py); an interval that excludes 0 is decided by the seeds.", "",
             f"cost vs baseline: mean {'CPU' if clock == 'train_cpu_seconds' else 'wall'} seconds of the training "
             "process per run, over the baseline's.", "",
             "| method | seeds | AP (mean ± std) | AP50 | AP75 | gain vs baseline [95 % CI] | steps | train s / run | "
             "cost vs baseline |", "|---|---|---|---|---|---|---|---|---|"]
    for m, rs in by.items():
        ap, sd = mean_sd([r["AP"] for r in rs])
        g = None if m == "baseline" else paired_gain({r["seed"]: r["AP"] for r in rs}, base_by_seed)
        gain = "" if g is None else str(g)
        secs = [r["train_seconds"] for r in rs if r.get("train_seconds")]
        mean_s = statistics.mean(secs) if secs else None
        costs = [r[clock] for r in rs if r.get(clock)]
        cost = f"{statistics.mean(costs) / base_s:.2f}x" if costs and base_s else ""
        run_steps = ", ".join(str(s) for s in sorted({r.get("steps") for r in rs}, key=str))
        lines.append(f"| {m} | {len(rs)} | {ap:.2f} ± {sd:.2f} | {statistics.mean(r['AP50'] for r in rs):.2f} | "
                     f"{statistics.mean(r['AP75'] for r in rs):.2f} | {gain} | {run_steps} | {_fmt_s(mean_s)} | {cost} |")
    total = sum(r.get("train_seconds") or 0 for r in results["runs"]) + (t.get("train_seconds") or 0)
    lines += ["", f"Time per part (training seconds, summed over seeds): teacher {_fmt_s(t.get('train_seconds'))}; "
              + "; ".join(f"{m} {sum(r.get('train_seconds') or 0 for r in rs):.0f}" for m, rs in by.items())
              + f"; total {total:.0f} s ({total / 3600:.2f} h of single-run time)."]
    return superseded_banner(results) + "\n".join(lines) + "\n"


def superseded_banner(results: dict) -> str:
    """The note that opens the report of a file a rerun replaced (``superseded_by``, ``superseded_why``), or ""."""
    if not results.get("superseded_by"):
        return ""
    report = Path(results["superseded_by"]).with_suffix(".md").name
    return (f"> **Superseded** by [{results['superseded_by']}]({report}): "
            f"{results.get('superseded_why', '')}\n\n")


ALONE_COLORS = {"baseline": "grey", "baseline_long": "tab:green"}  # the student-alone arms
CURVE_LABELS = {"baseline": "student alone", "baseline_long": "student alone, equal cost"}  # other methods: their name
FULL_COLORS = ("tab:blue", "tab:purple", "tab:orange", "tab:brown", "tab:pink", "tab:olive")  # full method, variants


def method_colors(names) -> dict[str, str]:
    """One colour per method, the same in every panel: the student-alone arms theirs, the full method and its
    variants one each (``FULL_COLORS``, in name order), the rest blue; in a file with neither (a screen of single
    terms), each method one of ``FULL_COLORS``."""
    arms = results_file.full_method_arms(names) or [n for n in names if n not in ALONE_COLORS]
    return {n: ALONE_COLORS.get(n) or (FULL_COLORS[arms.index(n) % len(FULL_COLORS)] if n in arms else "tab:blue")
            for n in names}


def mean_curve(runs: list[dict]) -> tuple[list[int], list[float], list[float]]:
    """Mean and std of the val AP over seeds at the steps every run evaluated."""
    curves = [dict((int(s), ap) for s, ap in r.get("curve_val", [])) for r in runs]
    common = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
    mean = [statistics.mean(c[s] for c in curves) for s in common]
    sd = [statistics.stdev([c[s] for c in curves]) if len(curves) > 1 else 0.0 for s in common]
    return common, mean, sd


def cost_curves(results: dict) -> dict[str, tuple[list[float], list[float], list[float]]]:
    """``{method: (training CPU seconds, mean val AP, std)}`` for the equal-cost question: the student alone,
    ``baseline_long`` and the method its length was matched to (the file's DETRDistill arm when it was sized
    from another file or by hand), each curve's steps turned into seconds at the mean CPU cost per step of its runs
    (``train_cpu_seconds`` / ``steps``). Empty without ``baseline_long`` runs, or when a run recorded no CPU time:
    wall time depends on the load a run shared the machine with, so it does not make a common axis."""
    by = _by_method(results)
    if not by.get("baseline_long"):
        return {}
    ref = (results.get("baseline_long") or {}).get("from")
    names = [n for n in ("baseline", "baseline_long", ref if ref in by else results_file.full_method(results))
             if by.get(n)]
    if cost_clock([r for n in names for r in by[n]]) != "train_cpu_seconds":
        return {}
    out = {}
    for n in names:
        per_step = statistics.mean(r["train_cpu_seconds"] / r["steps"] for r in by[n])
        steps, mean, sd = mean_curve(by[n])
        out[n] = ([st * per_step for st in steps], mean, sd)
    return out


def _mean_band(axis, xs: list[float], mean: list[float], sd: list[float], method: str, seeds: int,
               color: str) -> None:
    """One method's mean curve over seeds with its ± std band, in the method's colour and label."""
    label = f"{CURVE_LABELS.get(method, method)} ({seeds} seed{'s' * (seeds != 1)})"
    axis.plot(xs, mean, color=color, marker="o", ms=3, label=label)
    axis.fill_between(xs, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=color,
                      alpha=0.2)


def bar_and_curve_chart(results: dict, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # e.g. a GPU machine without it: the JSON and the table are what count
        print("matplotlib missing: no chart", flush=True)
        return
    by = _by_method(results)
    names = list(by)
    stats = [mean_sd([r["AP"] for r in by[n]]) for n in names]
    colors = method_colors(names)
    by_cost = cost_curves(results)
    # the student alone and the full method's variants (results_file.full_method_arms): single terms, other
    # baselines and other teachers (the teacher-strength plot's) are left to the bars; a screen: its arms
    step_arms = (["baseline"] if "baseline" in by else []) + results_file.full_method_arms(names) or names
    by_step = {n: curve for n in step_arms if (curve := mean_curve(by[n]))[0]}  # those with val curves
    t_curve = results["teacher"].get("curve_val") or []
    panels = [True, bool(by_step), bool(by_cost)]  # bars; AP vs step; AP vs cost
    fig, axes = plt.subplots(1, sum(panels), figsize=(1.1 * len(names) + 5 * sum(panels) - 2, 4.2), squeeze=False)
    row = iter(axes[0])
    ax = next(row)
    cx, kx = (next(row) if on else None for on in panels[1:])
    ax.bar(names, [m for m, _ in stats], yerr=[s for _, s in stats], capsize=4, color=[colors[n] for n in names])
    if "AP" in results["teacher"]:
        ax.axhline(results["teacher"]["AP"], color="tab:red", ls="--", label="teacher")
        ax.legend(loc="lower right")
    ax.set_ylabel(f"AP ({results.get('report_split')}, last checkpoint)")
    ax.set_title(f"{results['dataset']}: student AP by method (mean ± std over seeds)", fontsize=10)
    plt.setp(ax.get_xticklabels(), rotation=30, ha="right")
    if cx is not None:
        for name, (steps, mean, sd) in by_step.items():
            _mean_band(cx, steps, mean, sd, name, len(by[name]), colors[name])
        if t_curve:
            cx.axhline(t_curve[-1][1], color="tab:red", ls="--", label="teacher (val, end of its training)")
        cx.set_xlabel("optimizer step")
        cx.set_ylabel("AP (val)")
        cx.set_title("AP vs step (mean ± std over seeds)", fontsize=10)
        cx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)
    if kx is not None:  # the equal-cost question: AP against what the training cost
        for name, (secs, mean, sd) in by_cost.items():
            _mean_band(kx, secs, mean, sd, name, len(by[name]), colors[name])
        kx.set_xlabel("training CPU seconds (the method's mean per step x step)")
        kx.set_ylabel("AP (val)")
        kx.set_title("AP vs training cost (mean ± std over seeds)", fontsize=10)
        kx.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, fontsize=8, frameon=False)
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, dpi=110, format="png")
    plt.close(fig)
    results_file.write_atomic(path, png.getvalue())


def save_with_report(out: Path, results: dict) -> None:
    """``results`` to ``out`` (atomic), with its ``.md`` report and, once it holds runs, its ``.png`` chart beside it."""
    results_file.write_atomic(out, results)
    results_file.write_atomic(out.with_suffix(".md"), summarize(results))
    if results["runs"]:
        bar_and_curve_chart(results, out.with_suffix(".png"))
