"""The engine's Task interface: the optimizer, checkpoints and export see only what the task exposes."""
from __future__ import annotations

import pytest
import torch

from detrdistill.config import DistillConfig, LossConfig, OptimConfig
from detrdistill.distillation.detr_distiller import DETRDistiller
from detrdistill.distillation.task import DistillTask
from detrdistill.engine.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from detrdistill.engine.optim import build_optimizer, build_scheduler
from detrdistill.engine.task import Task
from detrdistill.engine.tasks import DetectionTask
from detrdistill.errors import CheckpointError
from detrdistill.ops.criterion import SetCriterion

from .test_distiller import ID2LABEL, make, model_cfg


@pytest.fixture(scope="module")
def pair():
    teacher = make(model_cfg(d_model=64, queries=12, layers=2, levels=2), seed=1)
    return teacher, make(model_cfg(queries=10, levels=2), seed=2)


def _task(pair, seed=3):
    teacher, _ = pair
    torch.manual_seed(seed)
    student = make(model_cfg(queries=10, levels=2), seed=seed)
    return DistillTask(DETRDistiller(teacher, student, DistillConfig(), loss=LossConfig(recipe="set")))


def test_both_tasks_implement_the_interface(pair):
    assert isinstance(_task(pair), Task)
    assert isinstance(DetectionTask(pair[1], SetCriterion(len(ID2LABEL))), Task)


def test_optimizer_and_checkpoint_never_hold_the_teacher(pair):
    task = _task(pair)
    teacher_ids = {id(p) for p in task.distiller.teacher.parameters()}
    opt = build_optimizer(task, OptimConfig())
    in_opt = {id(p) for g in opt.param_groups for p in g["params"]}
    assert in_opt and not in_opt & teacher_ids
    assert {id(p) for p in task.student.parameters() if p.requires_grad} <= in_opt
    state = task.checkpoint_state_dict()
    assert state and not any(k.startswith("distiller.teacher.") for k in state)
    assert any(k.startswith("distiller.student.") for k in state)


def test_checkpoint_roundtrip_through_the_interface(pair, tmp_path):
    task, other = _task(pair, seed=3), _task(pair, seed=4)
    cfg = OptimConfig()
    opt, opt2 = build_optimizer(task, cfg), build_optimizer(other, cfg)
    sched, sched2 = build_scheduler(opt, 10, cfg), build_scheduler(opt2, 10, cfg)
    key = next(iter(task.checkpoint_state_dict()))
    assert not torch.equal(task.checkpoint_state_dict()[key], other.checkpoint_state_dict()[key])
    save_checkpoint(tmp_path, task, opt, sched, {"step": 1, "elapsed_s": 0.0})
    load_checkpoint(latest_checkpoint(tmp_path), other, opt2, sched2)
    a, b = task.checkpoint_state_dict(), other.checkpoint_state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    broken = dict(a)
    broken.pop(key)
    with pytest.raises(CheckpointError, match="missing"):
        other.load_checkpoint_state_dict(broken)
    with pytest.raises(CheckpointError, match=r"unexpected \['stray.weight'\]"):
        other.load_checkpoint_state_dict({**a, "stray.weight": torch.zeros(1)})


def test_a_trainable_teacher_is_refused(pair):
    task = _task(pair)
    p = next(task.distiller.teacher.parameters())
    p.requires_grad_(True)
    try:
        with pytest.raises(RuntimeError, match="frozen"):
            build_optimizer(task, OptimConfig())
    finally:
        p.requires_grad_(False)
