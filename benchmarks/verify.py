"""``python benchmarks/distill.py --verify FILE --method M --seed N``: rerun one committed run here and compare.

The run is retrained with the file's configs, overrides, teacher and thread count (into ``--work-dir``, default
``runs/verify/<file name>``; the teacher recorded in the file is reused when its folder is here, else retrained
from its config). Then:

* same environment as the committed run (commit, versions, device, threads: ``run_env.differences`` is empty) ->
  ``identical`` when the AP is equal to the last digit (training is deterministic there), else a failure;
* another environment (the differing fields are named) -> whether the new AP lies inside the committed spread of
  that method (mean ± 2 sd over its seeds: another machine or library version acts like a new seed).

Exit code 0 for "identical" or "inside the spread", 1 otherwise.
"""
from __future__ import annotations

from pathlib import Path

from benchmarks import results_file, run_env, teachers
from benchmarks.runner import BenchmarkError, resolve
from benchmarks.stats import mean_sd, spread


def _benchmark_args(results: dict, run: dict, work_dir: str) -> list[str]:
    """The benchmark command line that reproduces ``run``'s settings (configs, overrides, teachers, threads)."""
    ov = results.get("overrides", {})
    argv = ["--dataset", results["dataset"], "--student-config", results["student"]["config"],
            "--teacher-config", results["teacher"].get("config") or results["student"]["config"],
            "--work-dir", work_dir, "--methods", run["method"], "--seeds", str(run["seed"])]
    if run.get("threads"):
        argv += ["--threads", str(run["threads"])]
    for flag, key in (("--set", "set"), ("--teacher-set", "teacher_set"), ("--student-set", "student_set")):
        for o in ov.get(key, []):
            argv += [flag, o]
    for name, t in results.get("teachers", {}).items():
        argv += ["--teacher-variant", f"{name}={t['spec']}"]
    teacher_dir = results["teacher"].get("model_dir")
    if teacher_dir and (resolve(teacher_dir) / "config.json").is_file():
        argv += ["--teacher", teacher_dir]
    return argv


def verify(args) -> int:
    from benchmarks.distill import needs_teacher, parse_args, split_method, train_student

    path = resolve(args.verify)
    results = results_file.read(path)
    if results is None:
        raise BenchmarkError(f"{args.verify}: no such results file")
    runs = [r for r in results["runs"] if (r["method"], r["seed"]) == (args.method, args.seed)]
    if not runs:
        have = sorted({(r["method"], r["seed"]) for r in results["runs"]})
        raise BenchmarkError(f"{args.verify} has no run {args.method} seed {args.seed} (it has {have[:12]})")
    committed = runs[0]
    work_dir = args.work_dir or str(Path("runs") / "verify" / path.stem)
    bargs = parse_args(_benchmark_args(results, committed, work_dir))
    bargs.allow_mixed = True  # the rerun's own folders; the committed file is only read
    work = resolve(work_dir)
    teacher = None
    if needs_teacher(args.method):
        variant = split_method(args.method)[1]
        main = teachers.main_teacher(bargs, work, need=True)
        teacher = teachers.variant_dir(bargs, work, main, variant) if variant else main
    steps = (results.get("baseline_long") or {}).get("steps") if args.method == "baseline_long" else None
    new = train_student(bargs, work, teacher, args.method, args.seed, steps)

    here, then = new["env"], committed.get("env")
    print(f"committed: AP {committed['AP']:.4f} ({run_env.describe(then)})")
    print(f"rerun:     AP {new['AP']:.4f} ({run_env.describe(here)})")
    differs = run_env.differences(here, then)
    if not differs:
        if new["AP"] == committed["AP"]:
            print("identical")
            return 0
        print(f"NOT identical although the environment matches (difference {new['AP'] - committed['AP']:+.4f})")
        return 1
    values = [r["AP"] for r in results["runs"] if r["method"] == args.method]
    low, high = spread(values)
    m, sd = mean_sd(values)
    inside = low <= new["AP"] <= high
    print(f"environment differs ({'; '.join(differs)}): the rerun's AP lies {'inside' if inside else 'OUTSIDE'} "
          f"the committed spread of {args.method}: {m:.2f} ± 2 × {sd:.2f} = [{low:.2f}, {high:.2f}] "
          f"over {len(values)} seed(s)")
    return 0 if inside else 1
