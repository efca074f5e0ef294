"""Output folders that protect finished work.

A run folder (``train.output_dir``) holds one run. :func:`claim_run_dir` is called before a run
writes anything: it takes the folder's lock (:mod:`detrdistill.output_folder`: one process at a time, never
a folder holding or inside one of the run's inputs, :func:`run_inputs`) and decides what happens to a folder
that already holds a run:

=====================  ==========================================================================
flags                  folder holds another run
=====================  ==========================================================================
(none)                 refused: :class:`RunDirError` naming the folder and the two flags
``--resume``           continued, if the saved ``config.yaml`` equals the new config up to
                       :data:`RESUME_MAY_CHANGE`; otherwise refused naming the keys that differ,
                       before any file is touched
``--overwrite``        the previous run's files (:data:`RUN_FILES`) are deleted, said in one
                       warning line; other files (e.g. the synthetic ``data/``) are kept
=====================  ==========================================================================

What may change on ``--resume`` (:data:`RESUME_MAY_CHANGE`): the length of training
(``train.epochs``, ``train.max_steps``, ``train.time_budget_min``) and keys that change nothing the
model computes (``train.progress``, ``train.log_every``, ``train.eval_every_epochs``,
``train.checkpoint_every_steps``, ``train.keep_checkpoints``, ``train.snapshot_steps``, ``data.num_workers``: the data order
does not depend on the number of workers; ``data.cache_images``: cached images are the decoded files' pixels)
and ``train.output_dir`` (the same folder, spelled another way). Everything else (model, data, loss,
optimizer, distillation, seed, batch size) would mix two different runs in one folder. A run's kind (its task's
``name``: train / distill) is kept in ``run.json`` (key ``mode``); resuming it as the other kind is refused too.

It also probes, before training, that the folder, ``checkpoints/`` and ``model/`` can be written
(:func:`probe_writable`), so a read-only folder fails at start-up, not after training.

Nothing is deleted or written by the checks: :func:`commit_run_dir` (``--overwrite``'s deletion, ``run.json``,
``config.yaml``) runs only once the data, the model and the teacher have loaded and a resumed checkpoint
has been accepted, so every refusal (data policy, teacher, changed inputs) leaves the folder as it was.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import yaml

from detrdistill.errors import DetrDistillError
from detrdistill.io_atomic import write_atomic
from detrdistill.output_folder import NO_LOCK, FolderLock, OutputFolderError, check_inputs_apart, claim_output

log = logging.getLogger("detrdistill")

RUN_FILES = ("config.yaml", "run.json", "metrics.jsonl", "eval.json", "checkpoints", "model", "model.tmp", "model.old",
             "snapshots")
RESUME_MAY_CHANGE = frozenset({
    "train.epochs", "train.max_steps", "train.time_budget_min",  # the length of training
    "train.progress", "train.log_every", "train.eval_every_epochs", "train.checkpoint_every_steps",
    "train.keep_checkpoints", "train.snapshot_steps", "data.num_workers", "data.cache_images", "train.output_dir",
})


class RunDirError(OutputFolderError):
    """The output folder cannot be used as asked (holds another run, config changed, not writable)."""


def holds_run(out: Path) -> bool:
    """True when ``out`` holds (part of) a run: metrics, a checkpoint, an export or eval.json. A lone
    ``config.yaml`` (a run refused before its first step, e.g. a wrong model path) does not count."""
    return any((out / f).is_file() for f in ("metrics.jsonl", "eval.json")) or \
        (out / "model" / "config.json").is_file() or \
        ((out / "checkpoints").is_dir() and any(p.name.startswith("step-") for p in (out / "checkpoints").iterdir()))


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def config_differences(saved: dict, new: dict) -> list[str]:
    """Dotted keys whose values differ between two config dicts, except :data:`RESUME_MAY_CHANGE`."""
    a, b = _flatten(saved), _flatten(new)
    return sorted(k for k in set(a) | set(b) if k not in RESUME_MAY_CHANGE and a.get(k) != b.get(k))


def check_resume(out: Path, cfg, task) -> None:
    """Refuse (before touching anything) a resume whose config or kind of task (``task.name``, see
    :class:`~detrdistill.engine.task.TaskType`) differs from the saved run's."""
    saved_file = out / "config.yaml"
    if saved_file.is_file():
        try:
            saved = yaml.safe_load(saved_file.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise RunDirError(f"{saved_file}: unreadable ({type(e).__name__}); cannot check the config of the "
                              "run to resume; fix the file or start over with --overwrite") from None
        try:  # through today's schema: keys added since (with defaults) or retired do not count as changes
            from detrdistill.config import load_config
            saved = load_config(saved_file).model_dump(mode="json")
        except DetrDistillError:
            pass  # not valid today: compare the raw file, every difference is named
        diff = config_differences(saved, cfg.model_dump(mode="json"))
        if diff:
            shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
            raise RunDirError(f"{out}: --resume with a config that differs from the run's config.yaml in {shown}; "
                              "resume with the original config (only the training length may change), or use "
                              "--overwrite or another --output-dir")
    info_file = out / "run.json"
    if info_file.is_file():
        try:
            saved_mode = json.loads(info_file.read_text()).get("mode")
        except (OSError, ValueError):
            saved_mode = None
        if saved_mode and saved_mode != task.name:
            raise RunDirError(f"{out}: holds a `{saved_mode}` run; `{task.name} --resume` would mix them; "
                              "use another --output-dir")


def data_inputs(data, splits: tuple[str, ...] = ("train", "val", "test")) -> list[tuple[str, str]]:
    """(what, path) of the annotation files and image folders of ``data``'s splits (``cfg.data``)."""
    out = []
    for name in splits:
        split = getattr(data, name, None)
        if split is not None:
            out += [(f"data.{name}.ann_file", split.ann_file), (f"data.{name}.image_dir", split.image_dir)]
    return out


def run_inputs(cfg, task) -> list[tuple[str, str]]:
    """(what, path) of everything a run of ``task`` (a :class:`~detrdistill.engine.task.TaskType`) reads: its
    datasets (a synthetic set it generates itself is not an input), ``model.pretrained``,
    ``model.backbone.pretrained`` and the task's own inputs that are local folders (a hub id has no local path to
    protect)."""
    inputs = data_inputs(cfg.data)
    inputs += [(k, v) for k, v in (("model.pretrained", cfg.model.pretrained),
                                   ("model.backbone.pretrained", cfg.model.backbone.pretrained)) if v]
    return inputs + [(what, name) for what, _, name in task.inputs(cfg) if Path(name).expanduser().exists()]


def probe_writable(folder: Path, create: bool = True) -> None:
    """Write + delete a probe file in ``folder`` (created first when ``create``; when not, a folder that
    does not exist yet is only checked not to be blocked by a file); :class:`RunDirError` if impossible."""
    if not create and not folder.exists() and not folder.is_symlink():
        return
    try:
        if create or not folder.is_dir():
            folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise RunDirError(f"{folder}: cannot write here ({e.strerror or type(e).__name__}); fix its permissions "
                          "or choose another --output-dir") from None


def _remove_run(out: Path) -> list[str]:
    removed = []
    for name in RUN_FILES:
        p = out / name
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        elif p.exists() or p.is_symlink():
            p.unlink()
        else:
            continue
        removed.append(name)
    return removed


def claim_run_dir(cfg, task, resume: bool = False, overwrite: bool = False, main: bool = True,
                  inputs: list[tuple[str, str]] | None = None) -> tuple[bool, bool, FolderLock]:
    """Every check of ``cfg.train.output_dir`` for a run of ``task`` (a :class:`~detrdistill.engine.task.TaskType`),
    before anything is deleted or written; see the module docstring. Only the main process (``main``) locks the
    folder.

    ``inputs``: (what, path) the run reads (default :func:`run_inputs`). Returns ``(resume, replace, lock)``:
    whether an existing run is to be continued, whether one is to be replaced (``--overwrite``; done by
    :func:`commit_run_dir`), and the folder's lock (release it when the run ends)."""
    out = Path(cfg.train.output_dir)
    if resume and overwrite:
        raise RunDirError("--resume and --overwrite exclude each other: continue the run, or replace it")
    if out.exists() and not out.is_dir():
        raise RunDirError(f"{out}: exists and is not a folder; choose another --output-dir")
    inputs = run_inputs(cfg, task) if inputs is None else inputs
    if main:
        lock = claim_output(out, inputs, "--output-dir")
    else:  # every process refuses alike; the main one holds the lock
        check_inputs_apart(out, inputs, "--output-dir")
        lock = NO_LOCK
    try:
        existing = out.is_dir() and holds_run(out)
        if existing and not (resume or overwrite):
            raise RunDirError(f"{out}: holds another run; pass --resume to continue it, --overwrite to replace it, "
                              "or choose another --output-dir")
        if existing and resume:
            check_resume(out, cfg, task)
        if main:
            probe_writable(out)
            if not (existing and overwrite):  # --overwrite deletes them first
                for sub in ("checkpoints", "model"):
                    probe_writable(out / sub, create=False)
    except BaseException:
        lock.release()
        raise
    if resume and not existing:
        log.warning("--resume: no run in %s yet; starting a new one", out)
    return existing and resume, existing and overwrite, lock


def commit_run_dir(cfg, task, replace: bool = False, main: bool = True) -> None:
    """The run's first writes, after every check: ``replace`` (``--overwrite`` of an existing run) deletes
    the previous run's files (said in one warning line), then ``run.json`` (``{"mode": task.name}``) and
    ``config.yaml``."""
    if not main:
        return
    from detrdistill.config import save_config

    out = Path(cfg.train.output_dir)
    if replace:
        log.warning("--overwrite: replaced the previous run in %s (deleted %s)", out, ", ".join(_remove_run(out)))
        for sub in ("checkpoints", "model"):
            probe_writable(out / sub, create=False)
    write_atomic(out / "run.json", json.dumps({"mode": task.name}) + "\n")
    save_config(cfg, out / "config.yaml")


def export_atomically(export, path: str | Path, need: int | None = None) -> None:
    """Call ``export(tmp)`` into ``<path>.tmp``, then swap it in for ``path``: a crash never leaves a
    half-written model directory. The previous model is moved aside to ``<path>.old`` (a directory cannot be
    replaced by a rename), the new one renamed in, and only then is the old one deleted; a failed rename puts
    the old one back. A crash between the two renames leaves the previous model whole in ``<path>.old`` (the
    next export clears it; ``--resume`` exports again). A failed write (whatever the library raised) removes
    ``<path>.tmp`` and is one line; ``need``: bytes it writes, roughly."""
    from detrdistill.io_atomic import fsync_dir, write_guard

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    old = path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    with write_guard(path.parent, f"{path.name}/", need=need, cleanup=[tmp]):
        export(tmp)
    shutil.rmtree(old, ignore_errors=True)
    had_old = path.is_dir() and not path.is_symlink()
    if had_old:
        os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        if had_old:
            os.replace(old, path)
        raise
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


def distill_default_output_dir(train_output_dir: str) -> str:
    """Where ``distill`` writes when the output folder comes from the embedded default config:
    ``<train's default>_distill`` (``runs/synthetic_distill``), never the folder ``train`` writes to."""
    return str(train_output_dir).rstrip("/\\") + "_distill"
