"""Resume and time budgets, as the engine promises them (docs/reliability.md): a run resumed from the checkpoint
saved before an evaluation continues exactly as the uninterrupted run (the evaluation draws nothing from the global
RNG that dropout and denoising noise use); a budgeted run resumed before it planned its length plans after the
resume; the plan keeps one evaluation or checkpoint in reserve; a batch larger than the training set is refused
before anything is written."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from detrdistill.engine.trainer import _replan_after_overhead
from tests.conftest import tiny_overrides


def _train(out, synth_dir, *extra, resume=False):
    sets = sum((["--set", o] for o in tiny_overrides(out, synth_dir, *extra)), [])
    return main(["train", *sets, *(["--resume"] if resume else [])])


def _losses(out):
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


@pytest.mark.slow  # three short trainings through the CLI
def test_a_resume_from_before_an_evaluation_continues_like_the_uninterrupted_run(synth_dir, tmp_path):
    # 16 images, batch 4: an epoch is 4 steps, evaluated after each; dropout draws from the global RNG
    common = ["train.eval_every_epochs=1", "train.checkpoint_every_steps=4", "model.dropout=0.1",
              "optim.schedule=constant"]
    assert _train(tmp_path / "ref", synth_dir, *common, "train.max_steps=8") == 0
    assert _train(tmp_path / "run", synth_dir, *common, "train.max_steps=4") == 0  # saved at 4, then evaluated
    assert _train(tmp_path / "run", synth_dir, *common, "train.max_steps=8", resume=True) == 0
    ref, run = _losses(tmp_path / "ref"), _losses(tmp_path / "run")
    for step in range(5, 9):
        assert run[step] == pytest.approx(ref[step], rel=1e-6, abs=1e-7), (step, ref, run)


@pytest.mark.slow
def test_a_budgeted_run_resumed_before_its_plan_plans_after_the_resume(synth_dir, tmp_path):
    common = ["train.time_budget_min=30", "train.eval_every_epochs=0", "train.checkpoint_every_steps=20"]
    assert _train(tmp_path / "run", synth_dir, *common, "train.max_steps=20") == 0  # ends before step 30: no plan
    first = json.loads((tmp_path / "run" / "checkpoints" / "step-00000020" / "state.json").read_text())
    assert "planned_total" not in first
    assert _train(tmp_path / "run", synth_dir, *common, "train.max_steps=60", resume=True) == 0
    last = json.loads((tmp_path / "run" / "checkpoints" / "step-00000060" / "state.json").read_text())
    assert last["planned_total"] == 60 and last["plan_inputs"] == [60, 1800.0]  # timed steps 31-50, fits


def test_the_plan_keeps_an_overhead_in_reserve_and_never_lengthens():
    acc = SimpleNamespace(device=torch.device("cpu"), reduce=lambda t, how: t)
    run = SimpleNamespace(task=None, overhead_s=0.0, budget_s=100.0, plan_t0=10.0, plan_s0=10, accelerator=acc,
                          bar=None, state={"step": 100, "elapsed_s": 85.0, "planned_total": 120}, plan={"total": 120})
    _replan_after_overhead(run, 5.0)  # 90 s at step 100: 80 s over 90 steps; 10 s left, 5 s kept back -> 5 steps
    assert run.overhead_s == 5.0 and run.plan["total"] == run.state["planned_total"] == 105
    run.state.update(step=101, elapsed_s=80.0)
    _replan_after_overhead(run, 1.0)  # more time than the plan needs: it stays
    assert run.plan["total"] == 105 and run.overhead_s == 5.0


def test_a_batch_larger_than_the_training_set_is_refused_before_anything_is_written(synth_dir, tmp_path):
    out = tmp_path / "run"
    assert _train(out, synth_dir, "train.batch_size=32") == 2
    assert not out.exists() or not any(out.iterdir()), sorted(p.name for p in out.iterdir())
