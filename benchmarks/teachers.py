"""The teachers of a distillation benchmark: the main one and its variants (see benchmarks/distill.py).

The main teacher is trained once per work dir with the teacher config (``<work>/teacher``) unless ``--teacher DIR``
names one. A method written ``M@NAME`` distils from the variant ``NAME``, declared ``--teacher-variant NAME=SPEC``:

=================  ======================================================================================
SPEC               the teacher
=================  ======================================================================================
``snapshot:N``     the main teacher at step N of its own schedule (kept with ``train.snapshot_steps``)
``steps:N``        the teacher config trained for N steps instead (its lr schedule stretched to N)
``baseline:S``     the student alone, seed S (self-distillation control: a teacher of the student's size)
``dir:PATH``       a model dir
=================  ======================================================================================

Every teacher is evaluated on the reported split and recorded with its AP, parameters, steps and environment.
"""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks import results_file, run_env
from benchmarks.runner import (STATS, BenchmarkError, child_env, cli, params_of, resolve, run, sets,
                               val_curve)

KINDS = ("snapshot", "steps", "baseline", "dir")
ENV_FILE = "bench-env.json"  # the environment a run folder was trained in (written when its training starts)


def parse_variants(specs: list[str]) -> dict[str, tuple[str, str]]:
    """``["t600=snapshot:600", ...]`` -> ``{"t600": ("snapshot", "600")}``; a malformed spec is a one-line error."""
    out = {}
    for spec in specs:
        name, eq, rest = spec.partition("=")
        kind, colon, arg = rest.partition(":")
        if not (eq and colon and name and arg) or kind not in KINDS:
            raise BenchmarkError(f"--teacher-variant {spec!r}: expected NAME=KIND:ARG with KIND one of {KINDS}")
        if kind in ("snapshot", "steps", "baseline") and not arg.isdigit():
            raise BenchmarkError(f"--teacher-variant {spec!r}: {kind} takes a whole number")
        out[name] = (kind, arg)
    return out


def snapshot_steps(variants: dict[str, tuple[str, str]]) -> list[int]:
    return sorted(int(a) for k, a in variants.values() if k == "snapshot")


def check_env(folder: Path, allow_mixed: bool, threads: int | None = None) -> None:
    """Record the environment a run folder is trained in (``threads``: torch threads of its training process, None =
    the default); refuse to continue one begun in another environment."""
    env = run_env.environment(threads)
    f = folder / ENV_FILE
    if f.is_file():
        before = json.loads(f.read_text())
        if run_env.environment_key(before) != run_env.environment_key(env) and not allow_mixed:
            differ = "; ".join(run_env.differences(env, before, keys=run_env.ENV_KEYS))
            raise BenchmarkError(f"{folder} was begun in another environment (they differ in {differ}): delete the "
                                 "folder, or pass --allow-mixed")
        return
    folder.mkdir(parents=True, exist_ok=True)
    results_file.write_atomic(f, env)


def folder_env(folder: Path) -> dict | None:
    f = folder / ENV_FILE
    return json.loads(f.read_text()) if f.is_file() else None


def trained(out: Path) -> bool:
    """Whether the run folder ``out`` holds a finished training: its ``model`` and an ``eval.json`` not marked
    ``stopped_early`` (a run stopped by a signal writes both too, marked, and continues from its checkpoint)."""
    ev = _final_eval(out)
    return (out / "model" / "config.json").is_file() and ev is not None and not ev.get("stopped_early")


def _final_eval(out: Path) -> dict | None:
    """The ``eval.json`` a run folder's training wrote at its end or at a stop (marked ``stopped_early``), if any."""
    ev = out / "eval.json"
    return json.loads(ev.read_text()) if ev.is_file() else None


def _eval_is_current(ev: Path, model: Path) -> bool:
    """A cached evaluation of ``model`` made after its weights were last written (a teacher resumed or retrained
    since is evaluated again)."""
    weights = [*model.glob("*.safetensors"), model / "config.json"]
    newest = max((f.stat().st_mtime for f in weights if f.is_file()), default=0.0)
    return ev.is_file() and ev.stat().st_mtime >= newest


def train_teacher(args, work: Path, name: str = "teacher", extra: list[str] = ()) -> Path:
    """The teacher config trained into ``work/name`` (waits if another invocation trains it); its model dir."""
    out = work / name
    with results_file.claim(out, wait=True):  # another invocation may be training it: wait, then it is done
        if not trained(out):
            check_env(out, args.allow_mixed, args.threads)
            run(cli("train", args.teacher_config, "--resume", "--output-dir", str(out),
                    *sets(args.set + args.teacher_set + list(extra))), out / "log.txt", child_env(args.threads))
    return out / "model"


def train_baseline_teacher(args, work: Path, seed: int) -> Path:
    """The student alone (seed ``seed``) in ``work/baseline-s<seed>``, the folder the baseline method uses."""
    out = work / f"baseline-s{seed}"
    with results_file.claim(out, wait=True):
        if not trained(out):
            check_env(out, args.allow_mixed, args.threads)
            run(cli("train", args.student_config, "--output-dir", str(out), "--resume",
                    *sets(args.set + args.student_set + [f"train.seed={seed}"])), out / "log.txt",
                child_env(args.threads))
    return out / "model"


def main_teacher(args, work: Path, need: bool) -> Path:
    """The main teacher's model dir (trained first when ``need`` and no ``--teacher`` was given)."""
    if args.teacher:
        return given_model(resolve(args.teacher), "--teacher")
    snaps = snapshot_steps(args.variants)
    extra = [f"train.snapshot_steps={snaps}"] if snaps else []
    return train_teacher(args, work, extra=extra) if need else work / "teacher" / "model"


def variant_dir(args, work: Path, teacher: Path, name: str) -> Path:
    """The model dir of variant ``name`` (trained when missing)."""
    if name not in args.variants:
        raise BenchmarkError(f"method uses teacher variant {name!r}, not declared with --teacher-variant "
                             f"{name}=KIND:ARG")
    kind, arg = args.variants[name]
    if kind == "snapshot":
        path = teacher.parent / "snapshots" / f"step-{arg}"
        if not (path / "config.json").is_file():
            raise BenchmarkError(f"{path}: the main teacher has no snapshot at step {arg}; it must be trained with "
                                 f"train.snapshot_steps containing {arg} (delete {teacher.parent} to retrain it)")
        return path
    if kind == "steps":
        return train_teacher(args, work, f"teacher-{arg}steps", [f"train.max_steps={arg}"])
    if kind == "baseline":
        return train_baseline_teacher(args, work, int(arg))
    return given_model(resolve(arg), f"--teacher-variant {name}=dir:{arg}")


def given_model(path: Path, option: str) -> Path:
    """A teacher model dir named on the command line; refused when it is the ``model`` of a run folder whose
    training was stopped by a signal (that run writes its model too, with an ``eval.json`` marked so)."""
    if path.name == "model" and (_final_eval(path.parent) or {}).get("stopped_early"):
        raise BenchmarkError(f"{option}: {path} is the model of a run stopped before the end of its schedule "
                             f"({path.parent / 'eval.json'} is marked stopped_early); finish that run (rerun its "
                             "command: it resumes from its last checkpoint) or name another teacher")
    return path


def teacher_record(args, work: Path, teacher: Path, split: str, name: str = "teacher", config: str | None = None,
                   step: int | None = None) -> dict:
    """AP of a teacher on the reported split (evaluated once, cached in ``work/<name>-eval``, with the data section of
    ``config``), its parameters, steps, training time, val curve, the environment it was trained in and, when its run
    folder is here, the resolved config it was trained with (``trained_config``)."""
    config = config or args.teacher_config
    t_eval = work / f"{name}-eval"
    # two invocations sharing a work dir start together: one evaluates, the other waits and reads its result
    with results_file.claim(t_eval, wait=True):
        if not _eval_is_current(t_eval / "eval.json", teacher):
            run(cli("eval", config, "--model", str(teacher), "--split", split, "--eval-dir", str(t_eval),
                    *sets(args.set)), work / f"{name}-eval.log", child_env(args.threads))
    stats = json.loads((t_eval / "eval.json").read_text())
    rec = {"config": config, **{k: stats[k] for k in STATS}, "params": params_of(teacher),
           "model_dir": run_env.relative(teacher)}
    folder = teacher.parent.parent if teacher.parent.name == "snapshots" else teacher.parent  # the run folder
    info = folder / "eval.json"  # a teacher trained by this project (here or passed with --teacher)
    if (folder / "metrics.jsonl").is_file() and info.is_file():
        run_info = json.loads(info.read_text())
        rec.update(steps=step if step is not None else run_info.get("step"),
                   train_seconds=None if step is not None else run_info.get("train_seconds"),
                   curve_val=val_curve(folder / "metrics.jsonl"))
    rec["env"] = folder_env(folder)
    if (folder / "config.yaml").is_file():  # the resolved config it was trained with ("config" evaluated it)
        rec["trained_config"] = run_env.relative(folder / "config.yaml")
    return rec


def variant_record(args, work: Path, teacher: Path, name: str, split: str) -> dict:
    kind, arg = args.variants[name]
    path = variant_dir(args, work, teacher, name)
    config = args.student_config if kind == "baseline" else None
    return {"spec": f"{kind}:{arg}", **teacher_record(args, work, path, split, f"teacher-{name}", config,
                                                      int(arg) if kind == "snapshot" else None)}
