"""The cap on a term's pull on the update (distill.max_term_ratio, engine/term_cap.py): the weight rule against its
closed form, the recomposed loss and its gradients, the refusals, and in the engine: a binding cap down-weights the
terms, is logged and checkpointed and changes the training; a cap that never binds trains exactly as without it."""
from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from detrdistill.cli import main
from detrdistill.engine.metrics import read_metrics
from detrdistill.engine.term_cap import capped_weights, check_processes, recomposed_loss, restore
from detrdistill.errors import ConfigError
from tests.conftest import set_args, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def test_a_term_above_the_cap_is_brought_to_it_and_one_below_rises_back_toward_one():
    got = capped_weights({"query_prior": 4.0, "feature": 0.2, "logits": 1.0}, {"feature": 0.5}, max_ratio=1.0)
    assert got["query_prior"] == pytest.approx(0.25)  # 4x under weight 1 -> weight 1/4 puts it at 1x
    assert got["feature"] == pytest.approx(1.0)  # 0.2x under 0.5: at weight 1 it would be 0.4x, under the cap
    assert got["logits"] == pytest.approx(1.0)  # exactly at the cap: unchanged
    again = capped_weights({"query_prior": 1.5}, {"query_prior": 0.25}, max_ratio=1.0)
    assert again["query_prior"] == pytest.approx(0.25 / 1.5)  # still above under its weight: lowered further
    up = capped_weights({"query_prior": 0.5}, {"query_prior": 0.25}, max_ratio=1.0)
    assert up["query_prior"] == pytest.approx(0.5)  # below: it rises to the weight that would put it at the cap
    assert capped_weights({"q": 0.9}, {"q": 0.25}, max_ratio=2.0)["q"] == pytest.approx(0.25 * 2 / 0.9)


def test_a_batch_without_a_reading_leaves_the_weights_and_a_zero_gradient_restores_one():
    old = {"q": 0.3, "f": 0.4}
    got = capped_weights({"q": math.inf, "f": 0.0, "new": math.nan}, old, max_ratio=1.0)
    assert got == {"q": 0.3, "f": 1.0}  # own gradient zero: no reading; no gradient from f: nothing to cap
    assert capped_weights({"q": 2.0}, {"q": 0.0}, 1.0) == {"q": 1.0}  # a weight of 0 cannot be read: back to 1
    with pytest.raises(ValueError, match="max_ratio must be > 0"):
        capped_weights({"q": 1.0}, {}, 0.0)


def test_the_recomposed_loss_moves_each_part_from_its_old_weight_to_its_new_one():
    w = torch.ones(2, requires_grad=True)
    parts = {"student": w @ torch.tensor([1.0, 0.0]), "q": 0.5 * (w @ torch.tensor([0.0, 8.0])),  # taken at weight 0.5
             "f": w @ torch.tensor([2.0, 2.0])}
    loss = recomposed_loss(parts, {"q": 0.5}, {"q": 0.125, "f": 0.5})
    assert float(loss.detach()) == pytest.approx(1 + 8 * 0.125 + 4 * 0.5)
    (g,) = torch.autograd.grad(loss, [w])
    assert torch.allclose(g, torch.tensor([1 + 2 * 0.5, 8 * 0.125 + 2 * 0.5]))
    same = recomposed_loss(parts, {"q": 0.5}, {"q": 0.5})
    assert float(same.detach()) == pytest.approx(float(sum(parts.values()).detach()))


def test_the_start_up_block_says_when_the_cap_is_on():
    from detrdistill.config import Config
    from detrdistill.distillation.task import DistillTask

    assert not any("term cap" in line for line in DistillTask.summary_lines(Config(), 100))
    on = Config(distill={"max_term_ratio": 1.5, "term_ratio_every": 25})
    (line,) = [line for line in DistillTask.summary_lines(on, 100) if "term cap" in line]
    assert "1.5x the student's own" in line and "every 25 steps" in line


def test_the_cap_is_refused_under_several_processes_and_a_resume_gets_the_saved_weights():
    with pytest.raises(ConfigError, match="distill.max_term_ratio=1 needs one training process.*has 2"):
        check_processes(1.0, 2)
    check_processes(0.0, 2)  # off: nothing to refuse
    check_processes(1.0, 1)
    task = SimpleNamespace(term_cap=(1.0, 50), term_weights={})
    restore(SimpleNamespace(task=task, world=1, state={"step": 100, "term_weights": {"query_prior": 0.4}}))
    assert task.term_weights == {"query_prior": 0.4}
    fresh = SimpleNamespace(term_cap=(1.0, 50), term_weights={"stale": 0.1})
    restore(SimpleNamespace(task=fresh, world=1, state={"step": 0}))
    assert fresh.term_weights == {}
    with pytest.raises(ConfigError):
        restore(SimpleNamespace(task=SimpleNamespace(term_cap=(1.0, 50)), world=2, state={}))


def test_a_binding_cap_down_weights_the_terms_and_one_that_never_binds_changes_nothing(synth_dir,
                                                                                        tiny_teacher_dir, tmp_path):
    common = ["train.max_steps=4", "train.eval_every_epochs=0", "train.log_every=1", "train.probe_gradients=false",
              "train.checkpoint_every_steps=2", "distill.term_ratio_every=2"]
    runs = {}
    for name, cap in (("off", "0"), ("loose", "1e9"), ("tight", "1e-3")):
        out = tmp_path / name
        assert main(["distill", "--teacher", str(tiny_teacher_dir), *set_args(tiny_overrides(
            out, synth_dir, *common, f"distill.max_term_ratio={cap}"))]) == 0
        runs[name] = out
    caps = [r for r in read_metrics(runs["tight"] / "metrics.jsonl") if "cap/logits_weight" in r]
    assert [r["step"] for r in caps] == [1, 3]  # the first step, then every 2nd
    first = caps[0]
    for term in ("logits", "feature", "query_prior"):
        ratio, weight = first[f"cap/{term}_ratio"], first[f"cap/{term}_weight"]
        assert ratio > 0 and weight == pytest.approx(min(1.0, 1e-3 / ratio))  # the rule, from weight 1
    assert not any("cap/logits_weight" in r for r in read_metrics(runs["off"] / "metrics.jsonl"))
    saved = json.loads(next(iter(sorted((runs["tight"] / "checkpoints").glob("step-*"))))
                       .joinpath("state.json").read_text())
    assert set(saved["term_weights"]) == {"logits", "feature", "query_prior"}  # a resume continues with them
    weights = {k: load_file(str(v / "model" / "model.safetensors")) for k, v in runs.items()}
    assert all(torch.equal(weights["off"][k], weights["loose"][k]) for k in weights["off"])  # never binds: same run
    assert any(not torch.equal(weights["off"][k], weights["tight"][k]) for k in weights["off"])
