"""The benchmark protocol: runs pinned to their environment, one environment per file, statistics that decide,
the equal-cost control, teacher variants, and ``--verify`` on a tiny real run."""
import json
import math
import os
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("fcntl")
from benchmarks import distill, run_env, stats, teachers  # noqa: E402
from benchmarks.distill_report import summarize  # noqa: E402
from benchmarks.runner import BenchmarkError  # noqa: E402
from tests.conftest import TINY  # noqa: E402


def _run(method, seed, ap, env=None, secs=1.0, steps=5):
    return {"method": method, "seed": seed, "AP": ap, "AP50": ap, "AP75": ap, "APs": 0.0, "APm": ap, "APl": ap,
            "split": "val", "steps": steps, "train_seconds": secs, "curve_val": [[steps, ap]],
            "env": env if env is not None else run_env.environment(1)}


def test_config_hash_ignores_the_output_folder_only(tmp_path):
    a, b, c = tmp_path / "a.yaml", tmp_path / "b.yaml", tmp_path / "c.yaml"
    a.write_text(yaml.safe_dump({"train": {"output_dir": "x", "seed": 0}, "model": {"d_model": 32}}))
    b.write_text(yaml.safe_dump({"train": {"output_dir": "y", "seed": 0}, "model": {"d_model": 32}}))
    c.write_text(yaml.safe_dump({"train": {"output_dir": "x", "seed": 0}, "model": {"d_model": 64}}))
    assert run_env.config_hash(a) == run_env.config_hash(b) != run_env.config_hash(c)


def test_portable_command_writes_repository_paths_relative():
    cmd = run_env.portable_command([str(run_env.ROOT / "runs" / "bench"), "--out=" + str(run_env.ROOT / "r.json"),
                                    "/elsewhere/x", "plain"])
    assert cmd == ["runs/bench", "--out=r.json", "/elsewhere/x", "plain"]


def test_relative_keeps_a_path_under_a_link_in_the_repository_relative(tmp_path):
    elsewhere = tmp_path / "teacher"
    elsewhere.mkdir()
    link = run_env.ROOT / "runs" / f"link-{tmp_path.name}"
    link.parent.mkdir(exist_ok=True)
    link.symlink_to(elsewhere)
    try:
        assert run_env.relative(link / "model") == f"runs/{link.name}/model"  # not the folder it points to
        assert run_env.relative(elsewhere / "model") == str(elsewhere / "model")  # outside: as given
        assert run_env.portable_command([str(link / "model")]) == [f"runs/{link.name}/model"]
    finally:
        link.unlink()


def test_paired_gain_interval_is_the_t_interval_of_per_seed_differences():
    method = {0: 45.0, 1: 46.7, 2: 45.6, 5: 99.0}   # seed 5 has no baseline: not paired, not used
    base = {0: 39.8, 1: 42.1, 2: 42.9}
    g = stats.paired_gain(method, base)
    diffs = [5.2, 4.6, 2.7]
    half = 4.302652729911275 * statistics.stdev(diffs) / math.sqrt(3)  # t_{0.975, 2}
    assert g.n == 3 and g.mean == pytest.approx(statistics.mean(diffs))
    assert g.low == pytest.approx(g.mean - half) and g.high == pytest.approx(g.mean + half)
    assert g.decided
    undecided = stats.paired_gain({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert undecided.low < 0 < undecided.high and not undecided.decided
    assert stats.paired_gain({0: 1.0}, {0: 0.5}).low is None  # one seed: no interval
    assert stats.paired_gain({1: 1.0}, {0: 0.5}) is None


def test_report_shows_the_environment_and_the_gain_interval():
    results = {"dataset": "bccd", "device": "cpu", "report_split": "test", "command": "c", "teacher": {"AP": 44.0},
               "student": {"params": 1e6, "config": "s.yaml"},
               "runs": [_run("baseline", s, ap) for s, ap in enumerate((39.8, 42.1, 42.9))]
               + [_run("detrdistill", s, ap) for s, ap in enumerate((45.0, 46.7, 45.6))]}
    md = summarize(results)
    assert "environment (every run): commit " in md and "MIXED" not in md
    assert str(stats.paired_gain({0: 45.0, 1: 46.7, 2: 45.6}, {0: 39.8, 1: 42.1, 2: 42.9})) in md
    results["runs"].append(_run("fitnet", 0, 43.0, env={**run_env.environment(1), "commit": "f" * 40}))
    mixed = summarize(results)
    assert "MIXED: the runs come from 2 environments" in mixed and "fitnet s0" in mixed
    # a folder's teacher was trained elsewhere: the report does not pass the eval config off as its training config
    results["teachers"] = {"other": {"spec": "dir:runs/t", "AP": 40.0, "params": 2e6, "steps": 9, "config": "e.yaml"}}
    line = [ln for ln in summarize(results).splitlines() if ln.startswith("- other")][0]
    assert "(evaluated with e.yaml)" in line


def test_report_cost_is_in_cpu_seconds_when_every_run_has_them():
    def row(md, method):
        return [ln for ln in md.splitlines() if ln.startswith(f"| {method} |")][0]

    results = {"dataset": "bccd", "device": "cpu", "report_split": "test", "command": "c", "teacher": {"AP": 44.0},
               "student": {"params": 1e6, "config": "s.yaml"},
               "runs": [dict(_run("baseline", 0, 40.0, secs=500.0), train_cpu_seconds=100.0),
                        dict(_run("detrdistill", 0, 45.0, secs=300.0), train_cpu_seconds=250.0)]}
    md = summarize(results)
    assert row(md, "detrdistill").endswith("| 2.50x |") and "mean CPU seconds" in md
    del results["runs"][1]["train_cpu_seconds"]  # one run without: wall seconds for every run
    md = summarize(results)
    assert row(md, "detrdistill").endswith("| 0.60x |") and "mean wall seconds" in md


def test_report_says_how_the_equal_cost_length_was_set():
    def schedule(bl):
        results = {"dataset": "bccd", "device": "cpu", "report_split": "test", "command": "c", "teacher": None,
                   "student": {"params": 1e6, "config": "s.yaml"}, "baseline_long": bl,
                   "runs": [_run("baseline", 0, 40.0, steps=2400), _run("baseline_long", 0, 41.0, steps=6642)]}
        return summarize(results).split("schedule: ", 1)[1].split("\n", 1)[0]

    measured = schedule({"steps": 6642, "cost_ratio": 2.767, "from": "detrdistill_quality_warmup"})
    assert "6642 steps, the training time of detrdistill_quality_warmup = 2.767x the baseline's" in measured
    given = schedule({"steps": 6642, "cost_ratio": None, "from": "--long-steps", "why": "2400 x 2.767"})
    assert "6642 steps, given by --long-steps; 2400 x 2.767" in given and "None" not in given


def test_cost_curves_put_each_arm_on_its_cpu_seconds(tmp_path):
    from benchmarks import distill_report

    def run(method, seed, cpu, steps, curve):
        return dict(_run(method, seed, curve[-1][1], steps=steps), train_cpu_seconds=cpu, curve_val=curve)

    runs = [run("baseline", 0, 100.0, 100, [[50, 20.0], [100, 30.0]]),
            run("baseline", 1, 140.0, 100, [[50, 22.0], [100, 34.0]]),
            run("baseline_long", 0, 330.0, 300, [[150, 31.0], [300, 40.0]]),
            run("detrdistill_quality_warmup", 0, 300.0, 100, [[50, 28.0], [100, 36.0]])]
    results = {"dataset": "bccd", "device": "cpu", "report_split": "test", "command": "c", "teacher": {"AP": 44.0},
               "student": {"params": 1e6, "config": "s.yaml"}, "runs": runs,
               "baseline_long": {"steps": 300, "cost_ratio": None, "from": "--long-steps"}}
    curves = distill_report.cost_curves(results)
    # sized by hand: the file's DETRDistill arm is the method it is set against
    assert list(curves) == ["baseline", "baseline_long", "detrdistill_quality_warmup"]
    assert curves["baseline"] == (pytest.approx([60.0, 120.0]), [21.0, 32.0], pytest.approx([2 ** 0.5, 8 ** 0.5]))
    assert curves["baseline_long"][0] == pytest.approx([165.0, 330.0])  # 1.1 s a step
    assert curves["detrdistill_quality_warmup"][0] == pytest.approx([150.0, 300.0])
    distill_report.bar_and_curve_chart(results, tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    del runs[2]["train_cpu_seconds"]  # wall seconds depend on the load: no common axis
    assert distill_report.cost_curves(results) == {}
    assert distill_report.cost_curves({**results, "runs": runs[:2] + runs[3:]}) == {}  # no equal-cost arm


def test_the_step_panel_draws_the_student_alone_and_every_variant_of_the_full_method(tmp_path, monkeypatch):
    from benchmarks import distill_report

    drawn = []

    def band(axis, xs, mean, sd, method, seeds, color):
        drawn.append((method, seeds, color))
        axis.plot(xs, mean, label=method)  # something for the panel's legend

    monkeypatch.setattr(distill_report, "_mean_band", band)
    methods = ["baseline", "detrdistill_quality_warmup", "detrdistill_quality_warmup_stop50", "fitnet",
               "detrdistill@t600"]
    results = {"dataset": "bccd", "report_split": "test", "teacher": {"AP": 44.0},
               "runs": [_run(m, seed, 30.0 + seed) for m in methods for seed in (0, 1)]}
    distill_report.bar_and_curve_chart(results, tmp_path / "c.png")
    # the variants of the full method each in a colour of their own; single terms and other teachers: bars only
    assert drawn == [("baseline", 2, "grey"), ("detrdistill_quality_warmup", 2, "tab:blue"),
                     ("detrdistill_quality_warmup_stop50", 2, "tab:purple")]
    assert distill_report.method_colors(methods)["fitnet"] == "tab:blue"
    drawn.clear()  # a screen of single terms, no student alone: its arms
    distill_report.bar_and_curve_chart({**results, "runs": [_run("logits", 0, 1.0), _run("feature", 0, 2.0)]},
                                       tmp_path / "s.png")
    assert drawn == [("logits", 1, "tab:blue"), ("feature", 1, "tab:purple")]
    drawn.clear()  # no run with a val curve: no step panel, the bars alone
    distill_report.bar_and_curve_chart({**results, "runs": [dict(_run("baseline", 0, 1.0), curve_val=[])]},
                                       tmp_path / "b.png")
    assert drawn == [] and (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_a_file_of_another_environment_is_refused_unless_mixing_is_asked(tmp_path):
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"runs": [_run("baseline", 0, 1.0, env={**run_env.environment(1), "commit": "a" * 40})]}))
    with pytest.raises(BenchmarkError, match="another environment.*--allow-mixed") as refused:
        distill.check_one_environment(json.loads(out.read_text()), out, allow_mixed=False)
    assert "they differ in commit: " + "a" * 40 + " -> " in str(refused.value)  # only the commit differs
    assert "device:" not in str(refused.value).split("they differ in")[1]
    distill.check_one_environment(json.loads(out.read_text()), out, allow_mixed=True)
    same = {"runs": [_run("baseline", 0, 1.0)]}
    distill.check_one_environment(same, out, allow_mixed=False)  # one environment: accepted
    legacy = {"runs": [{k: v for k, v in _run("baseline", 0, 1.0).items() if k != "env"}]}
    with pytest.raises(BenchmarkError):  # runs that recorded no environment are not this one
        distill.check_one_environment(legacy, out, allow_mixed=False)


def test_a_run_folder_begun_in_another_environment_is_not_continued(tmp_path):
    folder = tmp_path / "baseline-s0"
    teachers.check_env(folder, allow_mixed=False)
    assert run_env.environment_key(teachers.folder_env(folder)) == run_env.environment_key(run_env.environment(None))
    teachers.check_env(folder, allow_mixed=False)  # same environment: continues
    threaded = tmp_path / "threaded"
    teachers.check_env(threaded, allow_mixed=False, threads=1)  # a teacher's folder records its thread count
    assert teachers.folder_env(threaded)["threads"] == 1
    (folder / teachers.ENV_FILE).write_text(json.dumps({**run_env.environment(None), "torch": "0.0"}))
    with pytest.raises(BenchmarkError, match="begun in another environment") as refused:
        teachers.check_env(folder, allow_mixed=False)
    assert "they differ in torch: 0.0 -> " in str(refused.value) and "device:" not in str(refused.value)


def test_baseline_long_gets_the_training_time_of_the_distilled_runs():
    args = distill.parse_args(["--dataset", "synthetic"])
    results = {"runs": [_run("baseline", 0, 1.0, secs=100.0, steps=2400), _run("baseline", 1, 1.0, secs=110.0,
                                                                                 steps=2400),
                        _run("detrdistill", 0, 2.0, secs=280.0, steps=2400)]}
    sched = distill.long_schedule(results, args)
    assert sched["steps"] == round(2400 * 280.0 / 105.0) and sched["cost_ratio"] == pytest.approx(280 / 105, 1e-3)
    assert distill.long_schedule({**results, "baseline_long": {"steps": 7}}, args) == {"steps": 7}  # fixed once
    assert sched["clock"] == "train_seconds"  # not every run has CPU seconds
    with pytest.raises(BenchmarkError, match="baseline_long needs"):
        distill.long_schedule({"runs": results["runs"][:2]}, args)


def test_baseline_long_uses_cpu_seconds_when_every_run_has_them():
    """Wall seconds measured under other loads mislead (a baseline timed beside three runs looked as slow as a
    distilled run timed beside one); CPU seconds of the training process set the length when all runs have them."""
    args = distill.parse_args(["--dataset", "synthetic"])
    runs = [dict(_run("baseline", 0, 1.0, secs=2459.0, steps=2400), train_cpu_seconds=700.0),
            dict(_run("detrdistill", 0, 2.0, secs=2587.0, steps=2400), train_cpu_seconds=1890.0)]
    sched = distill.long_schedule({"runs": runs}, args)
    assert sched["clock"] == "train_cpu_seconds" and sched["steps"] == round(2400 * 1890.0 / 700.0)
    runs[1] = {k: v for k, v in runs[1].items() if k != "train_cpu_seconds"}  # one run without: wall time for all
    assert distill.long_schedule({"runs": runs}, args)["steps"] == round(2400 * 2587.0 / 2459.0)


def test_baseline_long_of_a_file_whose_full_method_is_one_variant_takes_that_variants_cost():
    args = distill.parse_args(["--dataset", "synthetic"])
    runs = [_run("baseline", 0, 1.0, secs=100.0, steps=2400),
            _run("detrdistill_quality_warmup", 0, 2.0, secs=300.0, steps=2400)]
    sched = distill.long_schedule({"runs": runs}, args)
    assert sched["from"] == "detrdistill_quality_warmup" and sched["steps"] == 7200
    # a plain detrdistill arm is the reference whatever variants sit beside it
    runs.append(_run("detrdistill", 0, 2.0, secs=200.0, steps=2400))
    assert distill.long_schedule({"runs": runs}, args)["steps"] == 4800
    two = [runs[0], runs[1], _run("detrdistill_other", 0, 2.0, secs=250.0, steps=2400)]
    with pytest.raises(BenchmarkError, match="needs finished baseline and detrdistill runs"):
        distill.long_schedule({"runs": two}, args)  # two variants, no plain arm: which one is not clear
    named = distill.parse_args(["--dataset", "synthetic", "--long-from", "detrdistill_other"])
    sched = distill.long_schedule({"runs": two}, named)  # unless named: that method's cost, recorded as its source
    assert sched["from"] == "detrdistill_other" and sched["steps"] == 6000


def test_teacher_variants_are_declared_and_checked():
    assert teachers.parse_variants(["t600=snapshot:600", "self=baseline:9", "x=dir:runs/t"]) == {
        "t600": ("snapshot", "600"), "self": ("baseline", "9"), "x": ("dir", "runs/t")}
    for bad in ("t600", "t=snap:600", "t=snapshot:six", "=steps:4"):
        with pytest.raises(BenchmarkError):
            teachers.parse_variants([bad])
    with pytest.raises(SystemExit):  # a method naming an undeclared variant is refused before any work
        distill.parse_args(["--dataset", "synthetic", "--methods", "detrdistill@t600"])
    args = distill.parse_args(["--dataset", "synthetic", "--methods", "detrdistill@t600", "--teacher-variant",
                               "t600=snapshot:600"])
    assert teachers.snapshot_steps(args.variants) == [600]


def _tiny_config(tmp_path, name, steps):
    cfg = {}
    for item in TINY + [f"data.synth_dir={tmp_path / 'synth'}", f"train.max_steps={steps}",
                        "train.eval_every_epochs=0"]:
        key, value = item.split("=", 1)
        node = cfg
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


@pytest.mark.slow  # reruns a benchmark
def test_verify_reruns_a_committed_run_identically_here_and_judges_the_spread_elsewhere(tmp_path, capsys):
    student = _tiny_config(tmp_path, "student", 3)
    out = tmp_path / "res.json"
    common = ["--dataset", "synthetic", "--student-config", student, "--teacher-config", student, "--threads", "1"]
    assert distill.main(common + ["--methods", "baseline", "--seeds", "0", "1", "--work-dir", str(tmp_path / "w"),
                                  "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert all(r["env"]["commit"] == run_env.code_version()["commit"] and r["config_hash"] for r in saved["runs"])
    capsys.readouterr()
    verify = ["--verify", str(out), "--method", "baseline", "--seed", "0"]
    assert distill.main(verify + ["--work-dir", str(tmp_path / "v1")]) == 0
    assert capsys.readouterr().out.strip().endswith("identical")

    for r in saved["runs"]:  # as if the file had been made on another commit
        r["env"]["commit"] = "e" * 40
    out.write_text(json.dumps(saved))
    code = distill.main(verify + ["--work-dir", str(tmp_path / "v2")])
    text = capsys.readouterr().out
    assert "environment differs (commit: " + "e" * 40 in text and "committed spread of baseline" in text
    assert "device:" not in text.split("environment differs")[1]  # only what differs is named
    assert code == (0 if "lies inside" in text else 1)


def test_teacher_strength_points_pair_each_teacher_with_the_students_it_taught(tmp_path):
    from benchmarks import teacher_strength

    results = {"dataset": "bccd", "report_split": "test", "command": "c",
               "teacher": {"AP": 45.0, "steps": 2400},
               "teachers": {"t600": {"AP": 24.0, "spec": "snapshot:600", "steps": 600},
                            "self": {"AP": 41.0, "spec": "baseline:3"},
                            "unused": {"AP": 50.0, "spec": "steps:4800"}},
               "runs": [_run("baseline", s, ap) for s, ap in enumerate((40.0, 42.0, 41.0))]
               + [_run("detrdistill", s, ap) for s, ap in enumerate((46.0, 45.0, 46.5))]
               + [_run("detrdistill@t600", s, ap) for s, ap in enumerate((41.0, 43.0, 40.0))]
               + [_run("detrdistill@self", s, ap) for s, ap in enumerate((42.0, 42.5, 41.5))]}
    rows = teacher_strength.points(results, "detrdistill")
    assert [r["teacher"] for r in rows] == ["t600", "self", "teacher"]  # by teacher AP; a teacher without runs: none
    assert rows[-1]["students"] == {0: 46.0, 1: 45.0, 2: 46.5}
    assert [teacher_strength.is_self(r) for r in rows] == [False, True, False]  # the control: a point of its own
    md = teacher_strength.table(results, "detrdistill", rows)
    assert str(stats.paired_gain({0: 46.0, 1: 45.0, 2: 46.5}, {0: 40.0, 1: 42.0, 2: 41.0})) in md
    # the strongest teacher of the design (not the unused one, not the control) against the control, by seed
    assert (f"Strongest teacher (teacher, 45.00) − self-distillation control (self, 41.00), paired by seed: "
            f"{stats.paired_gain({0: 46.0, 1: 45.0, 2: 46.5}, {0: 42.0, 1: 42.5, 2: 41.5})}.") in md
    assert "self-distillation control" not in teacher_strength.table(results, "detrdistill", rows[::2])
    # the rise: a line fitted per seed through the teachers of the design (t600 and teacher; not the control)
    slopes = {s: np.polyfit([24.0, 45.0], [lo, hi], 1)[0] for s, lo, hi in ((0, 41.0, 46.0), (1, 43.0, 45.0),
                                                                            (2, 40.0, 46.5))}
    slope = teacher_strength.rise(rows)
    assert slope.n == 3 and slope.mean == pytest.approx(sum(slopes.values()) / 3)
    assert str(stats.paired_gain(slopes, {0: 0.0, 1: 0.0, 2: 0.0})) == str(slope) and str(slope) in md
    falling = [dict(r, students={s: 100 - a for s, a in r["students"].items()}) for r in rows]
    assert teacher_strength.rise(falling).mean == pytest.approx(-slope.mean)
    assert teacher_strength.rise(rows[:2]) is None  # one teacher of the design: no line
    assert "equal cost" not in md  # the file has no baseline_long runs
    # the student alone at equal cost: the strongest teacher's students against it, paired by seed
    results["baseline_long"] = {"steps": 6424}
    results["runs"] += [_run("baseline_long", s, ap) for s, ap in ((0, 47.0), (1, 44.0), (3, 50.0))]
    md = teacher_strength.table(results, "detrdistill", rows)
    assert (f"Student alone at equal cost (`baseline_long`, 6424 steps): 47.00 ± 3.00 (3 seeds). Strongest teacher "
            f"(teacher, 45.00) − it, paired by seed: {stats.paired_gain({0: 46.0, 1: 45.0}, {0: 47.0, 1: 44.0})}."
            ) in md
    assert teacher_strength.over_equal_cost(results, [r for r in rows if teacher_strength.is_self(r)]) is None
    f = tmp_path / "r.json"
    f.write_text(json.dumps(results))
    assert teacher_strength.main([str(f)]) == 0
    assert (tmp_path / "r-teacher-strength.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "r-teacher-strength.md").read_text() == md


def _fake_run_folder(folder, *, stopped: bool):
    (folder / "model").mkdir(parents=True)
    (folder / "model" / "config.json").write_text("{}")
    (folder / "model" / "model.safetensors").write_bytes(b"x")
    (folder / "eval.json").write_text(json.dumps({"AP": 0.0, **({"stopped_early": True} if stopped else {})}))


def test_a_teacher_stopped_by_a_signal_is_not_trained_yet(tmp_path):
    assert not teachers.trained(tmp_path / "none")
    _fake_run_folder(tmp_path / "stopped", stopped=True)  # a stop writes a model and eval.json too, marked
    assert not teachers.trained(tmp_path / "stopped")
    _fake_run_folder(tmp_path / "done", stopped=False)
    assert teachers.trained(tmp_path / "done")


def test_a_named_teacher_stopped_by_a_signal_is_refused(tmp_path):
    _fake_run_folder(tmp_path / "stopped", stopped=True)
    _fake_run_folder(tmp_path / "done", stopped=False)
    for option in (["--teacher", str(tmp_path / "stopped" / "model")],
                   ["--teacher-variant", f"t=dir:{tmp_path / 'stopped' / 'model'}", "--methods", "detrdistill@t"]):
        args = distill.parse_args(["--dataset", "synthetic", *option])
        with pytest.raises(BenchmarkError, match="stopped_early"):
            teachers.main_teacher(args, tmp_path, True) if "--teacher" in option else teachers.variant_dir(
                args, tmp_path, tmp_path / "done" / "model", "t")
    args = distill.parse_args(["--dataset", "synthetic", "--teacher", str(tmp_path / "done" / "model")])
    assert teachers.main_teacher(args, tmp_path, True) == tmp_path / "done" / "model"


def test_a_teacher_evaluation_is_redone_after_its_weights_change(tmp_path, monkeypatch):
    model = tmp_path / "teacher" / "model"
    _fake_run_folder(tmp_path / "teacher", stopped=False)
    evals = []

    def fake_eval(cmd, log, env):
        out = Path(cmd[cmd.index("--eval-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        evals.append(len(evals) + 1.0)
        (out / "eval.json").write_text(json.dumps({k: evals[-1] for k in teachers.STATS}))

    monkeypatch.setattr(teachers, "run", fake_eval)
    monkeypatch.setattr(teachers, "params_of", lambda m: 1)
    args = distill.parse_args(["--dataset", "synthetic"])
    assert teachers.teacher_record(args, tmp_path, model, "val")["AP"] == 1.0
    assert teachers.teacher_record(args, tmp_path, model, "val")["AP"] == 1.0  # cached: not evaluated again
    later = (tmp_path / "teacher-eval" / "eval.json").stat().st_mtime + 10
    os.utime(model / "model.safetensors", (later, later))  # the teacher resumed and finished since
    assert teachers.teacher_record(args, tmp_path, model, "val")["AP"] == 2.0
    assert len(evals) == 2


def test_two_invocations_recording_one_teacher_at_once_evaluate_it_once(tmp_path, monkeypatch):
    import threading
    import time
    model = tmp_path / "teacher" / "model"
    _fake_run_folder(tmp_path / "teacher", stopped=False)
    evals = []

    def slow_eval(cmd, log, env):  # the second caller arrives while the first evaluates
        out = Path(cmd[cmd.index("--eval-dir") + 1])
        out.mkdir(parents=True, exist_ok=True)
        evals.append(1)
        time.sleep(0.3)
        (out / "eval.json").write_text(json.dumps({k: 1.0 for k in teachers.STATS}))

    monkeypatch.setattr(teachers, "run", slow_eval)
    monkeypatch.setattr(teachers, "params_of", lambda m: 1)
    args = distill.parse_args(["--dataset", "synthetic"])
    aps, errors = [], []

    def record():
        try:
            aps.append(teachers.teacher_record(args, tmp_path, model, "val")["AP"])
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=record) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and aps == [1.0, 1.0]
    assert len(evals) == 1


def test_every_benchmark_method_resolves_to_a_valid_config_and_leave_one_out_drops_only_its_term(tmp_path,
                                                                                                 monkeypatch):
    from detrdistill.config import load_config
    if not os.environ.get("DETRDISTILL_DATA"):  # the config's data paths are resolved, never opened, here
        monkeypatch.setenv("DETRDISTILL_DATA", str(tmp_path))
    terms = ("logits", "feature", "query_prior")
    qw = load_config("configs/cpu/bccd_d_fine_student.yaml",
                     list(distill.METHODS["detrdistill_quality_warmup"].overrides))
    for name, method in distill.METHODS.items():
        cfg = load_config("configs/cpu/bccd_d_fine_student.yaml", list(method.overrides))
        if name == "detrdistill_quality_warmup":
            assert (cfg.distill.logits.class_loss, cfg.distill.logits.box_weighting, cfg.distill.warmup_steps) == (
                "quality_focal", "teacher_score", 600)
            assert all(getattr(cfg.distill, t).enabled for t in terms)
        if name == "detrdistill_quality_warmup_stop50":  # the same plus the decay and stop, nothing else
            assert (cfg.distill.decay, cfg.distill.stop_at) == ("linear", 0.5)
            assert cfg.distill.model_copy(update={"decay": "none", "stop_at": 1.0}) == qw.distill
        if name == "detrdistill_quality_warmup_consistent":  # the same plus the group's teacher predictions
            assert cfg.distill.query_prior.teacher_predictions_weight == 1.0
            qp = cfg.distill.query_prior.model_copy(update={"teacher_predictions_weight": 0.0})
            assert cfg.distill.model_copy(update={"query_prior": qp}) == qw.distill
        if name == "detrdistill_quality_warmup_consistent_cap":  # the consistent one plus the cap, nothing else
            consistent = load_config("configs/cpu/bccd_d_fine_student.yaml", list(
                distill.METHODS["detrdistill_quality_warmup_consistent"].overrides))
            assert (cfg.distill.max_term_ratio, cfg.distill.term_ratio_every) == (1.0, 50)
            assert cfg.distill.model_copy(update={"max_term_ratio": 0.0}) == consistent.distill
        if name.startswith("detrdistill_no_"):
            dropped = name.removeprefix("detrdistill_no_")
            assert {t: getattr(cfg.distill, t).enabled for t in terms} == {t: t != dropped for t in terms}, name


def test_report_shows_the_files_notes_after_its_command():
    results = {"dataset": "bccd", "device": "cpu", "report_split": "test", "command": "c", "teacher": None,
               "student": {"params": 1e6, "config": "s.yaml"}, "runs": [_run("baseline", 0, 40.0)]}
    assert "note:" not in summarize(results)
    results["notes"] = ["baseline runs: brought in from another file", "second"]
    lines = summarize(results).splitlines()
    at = lines.index("command: `c`")
    assert lines[at + 2:at + 4] == ["note: baseline runs: brought in from another file", "note: second"]
