"""The distillation terms' weight over a run: warm-up, decay, early stop (distillation/term_schedule.py)."""
from __future__ import annotations

import math

import pytest

from detrdistill.config import DistillConfig
from detrdistill.distillation.term_schedule import needs_total, schedule_line, stop_step, term_scale
from detrdistill.errors import ConfigError


def test_the_defaults_are_full_weight_every_step_without_knowing_the_length():
    assert not needs_total("none", 1.0)
    assert [term_scale(s) for s in (0, 5, 10_000)] == [1.0, 1.0, 1.0]
    assert [term_scale(s, warmup_steps=4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
@pytest.mark.parametrize("stop_at", [0.5, 0.8, 1.0])
def test_warmup_then_decay_to_an_early_stop(decay, stop_at):
    total, warm = 100, 10
    if not needs_total(decay, stop_at):
        return
    scales = [term_scale(s, warm, decay, stop_at, total) for s in range(total)]
    end = stop_step(stop_at, total)
    assert all(0.0 <= x <= 1.0 for x in scales)
    assert scales[:warm] == [(s + 1) / warm for s in range(warm)]  # the warm-up is unchanged
    assert all(x == 0.0 for x in scales[end:])  # no distillation from the stop on
    after = scales[warm - 1:end]
    assert after[0] == 1.0 and all(x > 0 for x in after)
    if decay == "none":
        assert all(x == 1.0 for x in after)
    else:
        assert all(b < a for a, b in zip(after[1:], after[2:]))  # from 1 at the warm-up's end, falling to the stop
        mid = warm + (end - warm) // 2
        expected = 0.5 if decay == "linear" else 0.5 * (1 + math.cos(math.pi * (mid - warm) / (end - warm)))
        assert scales[mid] == pytest.approx(expected, abs=1e-9)


def test_a_stop_inside_the_warmup_cuts_it():
    assert [term_scale(s, 10, "linear", 0.05, 100) for s in range(7)] == [0.1, 0.2, 0.3, 0.4, 0.5, 0.0, 0.0]


def test_a_schedule_needing_the_length_refuses_to_guess_it():
    with pytest.raises(ConfigError, match="distill.decay=cosine / distill.stop_at=1.0 need the run's length"):
        term_scale(3, 0, "cosine", 1.0, None)


def test_the_config_bounds_stop_at():
    assert DistillConfig(stop_at=0.6, decay="linear").stop_at == 0.6
    for bad in (0.0, 1.5):
        with pytest.raises(ValueError):
            DistillConfig(stop_at=bad)


def test_the_start_up_line_says_when_the_terms_are_on():
    assert schedule_line(0, "none", 1.0, 100) is None  # the official setting: nothing to say
    assert schedule_line(10, "none", 1.0, 100) == "  distillation terms: ramp in over steps 1..10"
    line = schedule_line(10, "linear", 0.5, 100)
    assert "fall (linear) to 0 at step 51" in line and "off from step 51 of 100" in line
    assert [term_scale(s, 10, "linear", 0.5, 100) for s in (49, 50)][1] == 0.0 < term_scale(49, 10, "linear", 0.5, 100)


def _time_left(stop_at: float, cost, step: int, total: int, step_s: float):
    from types import SimpleNamespace

    from detrdistill.distillation.task import DistillTask
    task = SimpleNamespace(distiller=SimpleNamespace(cfg=DistillConfig(stop_at=stop_at), first_step_cost=cost))
    return DistillTask.time_left(task, step, total, step_s)


def test_the_time_estimate_counts_the_steps_after_the_stop_at_the_students_share():
    # teacher forward 0.6 s, student 0.2 s: a step without the teacher costs 3 * 0.2 / (0.6 + 3 * 0.2) = half a step
    assert _time_left(1.0, (0.6, 0.2), 2, 100, 1.0) == (98.0, "")  # no stop: every step as the one timed
    seconds, note = _time_left(0.5, (0.6, 0.2), 2, 100, 1.0)
    assert seconds == pytest.approx(48 + 50 * 0.5) and note == "steps 51..100 without the teacher at about 0.50 s"
    assert _time_left(0.5, (0.6, 0.2), 50, 100, 1.0)[0] == pytest.approx(50 * 0.5)  # the stop right after
    # the step timed already ran without the teacher (a resume past the stop), or no batch was distilled: as timed
    assert _time_left(0.5, (0.6, 0.2), 60, 100, 0.5) == (20.0, "")
    assert _time_left(0.5, None, 2, 100, 1.0) == (98.0, "")


def test_a_time_budget_plans_the_steps_after_the_stop_at_their_own_cost():
    """With ``distill.stop_at`` the budget's plan prices the student-only steps at their share (half a step here):
    the longest run whose remaining steps fit, checked against every length; before, every step was priced as a
    distilled one and the run ended with a third of its budget unused."""
    import torch

    from detrdistill.engine.trainer import _plan_to_budget

    class OneProcess:
        device = torch.device("cpu")

        def reduce(self, t, op):
            return t

    def time_left(step, total, step_s):
        return _time_left(0.5, (0.6, 0.2), step, total, step_s)

    state, plan = {"step": 30, "elapsed_s": 16.0}, {"total": 1000}  # 84 s left at 0.5 s a distilled step
    _plan_to_budget(state, plan, budget_s=100.0, per_step=0.5, accelerator=OneProcess(), time_left=time_left)
    fitting = [t for t in range(30, 1001) if time_left(30, t, 0.5)[0] <= 84.0]
    assert plan["total"] == state["planned_total"] == max(fitting) > 30 + 84 / 0.5  # more than every step distilled
    state, plan = {"step": 30, "elapsed_s": 16.0}, {"total": 200}
    _plan_to_budget(state, plan, budget_s=100.0, per_step=0.5, accelerator=OneProcess(), time_left=time_left)
    assert plan["total"] == 200  # a budget never lengthens a run
