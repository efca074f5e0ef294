"""Run set-up shared by training and evaluation: the accelerator, the output folder and the datasets."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from detrdistill.config import Config, SplitConfig
from detrdistill.engine.task import TaskType
from detrdistill.errors import ConfigError

log = logging.getLogger("detrdistill")

__all__ = ["make_accelerator", "claim_output_dir", "commit_output_dir", "build_datasets"]


def make_accelerator(cfg: Config):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    cpu = cfg.train.device == "cpu" or not torch.cuda.is_available()
    mp = cfg.train.mixed_precision
    if cpu and mp == "fp16":
        log.warning("fp16 needs a GPU; training in float32")
        mp = "no"
    # find_unused_parameters: layer-0 query projections of DETR-style decoders get no gradient
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    from detrdistill.engine.tracking import tracker_kwargs  # train.report_to (none by default)
    return Accelerator(cpu=cpu, mixed_precision=mp, kwargs_handlers=[ddp], **tracker_kwargs(cfg))


def claim_output_dir(cfg: Config, accelerator, task: TaskType, resume: bool = False, overwrite: bool = False):
    """Check ``cfg.train.output_dir`` for a run of ``task`` and take its lock (main process), writing nothing yet.

    A folder holding another run needs ``resume`` (its config must match) or ``overwrite``; a folder another
    process uses, or that holds or lies inside one of the run's inputs, is refused
    (:func:`detrdistill.engine.run_dir.claim_run_dir`). Returns ``(folder, resume, replace, lock)``."""
    from detrdistill.engine.run_dir import claim_run_dir

    resume, replace, lock = claim_run_dir(cfg, task, resume, overwrite, accelerator.is_main_process)
    return Path(cfg.train.output_dir), resume, replace, lock


def commit_output_dir(cfg: Config, accelerator, task: TaskType, replace: bool) -> None:
    """The run's first writes, once everything has loaded: ``--overwrite``'s deletion, ``run.json``,
    ``config.yaml`` (main process; :func:`detrdistill.engine.run_dir.commit_run_dir`)."""
    from detrdistill.engine.run_dir import commit_run_dir

    commit_run_dir(cfg, task, replace, accelerator.is_main_process)


def build_datasets(cfg: Config, accelerator, need_train: bool = True):
    """(train, val) CocoDetection datasets; generates the synthetic set when the config asks for it."""
    from detrdistill.data import build_dataset, make_synthetic_coco

    data = cfg.data
    if data.train is None and data.val is None:
        if not data.synthetic:
            raise ConfigError("config: data.train / data.val are not set; give COCO files or set data.synthetic=true")
        root = Path(data.synth_dir or Path(cfg.train.output_dir) / "data")
        if accelerator.is_main_process:
            make_synthetic_coco(root, num_train=data.synth_images, num_val=max(4, data.synth_images // 4),
                                size=data.synth_size, seed=data.synth_seed)
        accelerator.wait_for_everyone()
        data = data.model_copy(update={
            "train": SplitConfig(ann_file=str(root / "train.json"), image_dir=str(root / "images")),
            "val": SplitConfig(ann_file=str(root / "val.json"), image_dir=str(root / "images"))})
    train = build_dataset(data.train, data, train=True) if need_train and data.train else None
    val = build_dataset(data.val, data, train=False) if data.val else None
    if need_train and train is None:
        raise ConfigError("config: data.train is not set")
    if train is not None and val is not None:
        check_same_classes(train, val, data.train.ann_file, data.val.ann_file)
    return train, val


def check_same_classes(train, val, train_file: str, val_file: str) -> None:
    """The model is built with the training split's classes and scored on the validation split's: the two
    ``categories`` lists must name the same classes (ids may differ: each split maps its own), else every
    evaluation would silently score one class as another, or fail on a class the split does not list."""
    from detrdistill.data.validate import DatasetError

    if dict(train.id2label) == dict(val.id2label):
        return
    t, v = dict(train.id2label), dict(val.id2label)
    only_t, only_v = sorted(set(t.values()) - set(v.values())), sorted(set(v.values()) - set(t.values()))
    what = (f"only in {train_file}: {only_t}; only in {val_file}: {only_v}" if only_t or only_v else
            "the same names in another order: " + ", ".join(f"label {i} is {t[i]!r} in train, {v.get(i)!r} in val"
                                                         for i in sorted(t) if t[i] != v.get(i))[:300])
    raise DatasetError(f"{val_file}: its categories differ from the training split's ({what}); the model is "
                       "trained on the training split's classes and scored on these: give both files the same "
                       "'categories' list")
