"""The gradient balance probe (engine/grad_balance.py): ratios, cosines and the student's share of a clipped update
against closed forms; it keeps the graph so the step's backward is unchanged; a distillation run logs it at step 1
and trains exactly as without it."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from detrdistill.cli import main
from detrdistill.engine.grad_balance import gradient_balance, module_group
from detrdistill.engine.metrics import read_metrics
from tests.conftest import set_args, tiny_overrides

pytestmark = pytest.mark.usefixtures("one_thread")


def _parts(w):
    a, b = torch.tensor([3.0, 0.0, 0.0]), torch.tensor([0.0, 4.0, 0.0])
    return {"student": w @ a, "double": 2 * (w @ a), "side": w @ b, "constant": torch.tensor(5.0)}


def test_ratio_cosine_and_share_match_closed_forms():
    w = torch.ones(3, requires_grad=True)
    # gradients: own a = (3,0,0); double 2a; side b = (0,4,0) (orthogonal); constant: none
    free = gradient_balance(_parts(w), [w], max_norm=0.0)
    got = {t.name: t for t in free.terms}
    assert free.own_norm == pytest.approx(3.0)
    assert (got["double"].ratio, got["double"].cos) == (pytest.approx(2.0), pytest.approx(1.0))
    assert (got["side"].ratio, got["side"].cos) == (pytest.approx(4 / 3), pytest.approx(0.0, abs=1e-6))
    assert (got["constant"].ratio, got["constant"].cos) == (0.0, 0.0)
    assert free.own_share == pytest.approx(3.0)  # unclipped: the parallel part triples the own progress
    assert [t.name for t in free.dominant(1.5)] == ["double"]

    # clipped at 1: total (9, 4, 0) -> scaled to norm 1; its component along a, over the clipped own alone (1)
    clipped = gradient_balance(_parts(w), [w], max_norm=1.0)
    assert clipped.own_share == pytest.approx(9 / math.hypot(9, 4), rel=1e-5)
    assert clipped.record()["grad/side_ratio"] == pytest.approx(4 / 3)
    assert "side 1.33x (cos +0.00)" in clipped.line()


def test_the_probe_keeps_the_graph_and_leaves_the_gradient_alone():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.randn(5, 4)

    def parts():
        y = net(x).squeeze(-1)
        return {"student": (y - 1).pow(2).mean(), "term": y.abs().mean()}

    sum(parts().values()).backward()
    plain = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    p = parts()
    balance = gradient_balance(p, net.parameters(), max_norm=1.0)
    sum(p.values()).backward()  # the graph is still there after the probe
    for g, ref in zip((q.grad for q in net.parameters()), plain):
        torch.testing.assert_close(g, ref)
    assert balance.own_norm > 0 and balance.terms[0].ratio > 0
    with pytest.raises(ValueError, match="no part named"):
        gradient_balance({"term": p["term"]}, net.parameters())


@pytest.mark.parametrize("name, group", [
    ("distiller.student.model.model.backbone.model.embedder.embedder.convolution.weight", "backbone"),
    ("distiller.student.model.model.encoder_input_proj.0.1.weight", "encoder_input_proj"),
    ("distiller.student.model.class_embed.0.bias", "class_embed"),
    ("distiller.student.model.model.enc_score_head.weight", "enc_score_head"),
    ("distiller.feature_loss.adapters.0.weight", "connectors"),
    ("distiller.query_projection.proj.content.weight", "connectors"),
    ("model.decoder.layers.0.fc1.weight", "decoder"),  # a bare model
])
def test_module_group_names_the_students_module(name, group):
    assert module_group(name) == group


def test_per_module_ratios_match_closed_forms_and_skip_modules_either_gradient_misses():
    back, head, conn = (torch.ones(2, requires_grad=True) for _ in range(3))
    names = ["student.model.backbone.w", "student.model.class_embed.w", "distiller.feature_loss.adapters.0.w"]
    parts = {"student": back @ torch.tensor([1.0, 0.0]) + head @ torch.tensor([0.0, 10.0]),
             # the term: 6x the own gradient in the backbone, none in the head, and its connector
             "feature": back @ torch.tensor([0.0, 6.0]) + conn @ torch.tensor([5.0, 5.0])}
    b = gradient_balance(parts, [back, head, conn], names=names)
    got = {(m.name, m.module): m.ratio for m in b.modules}
    assert got == {("feature", "backbone"): pytest.approx(6.0)}  # not the head (it does not reach it), no connectors
    assert b.terms[0].ratio == pytest.approx(math.hypot(6, 5 * math.sqrt(2)) / math.hypot(1, 10))  # overall: ~0.9x
    assert not b.dominant() and [(m.name, m.module) for m in b.dominant_modules()] == [("feature", "backbone")]
    assert b.record()["grad/feature_ratio/backbone"] == pytest.approx(6.0)
    assert b.own_modules == {"backbone": pytest.approx(1.0), "class_embed": pytest.approx(10.0)}
    assert b.record()["grad/own_norm/class_embed"] == pytest.approx(10.0)
    assert "largest per module: feature 6.00x in backbone" in b.line()
    assert not gradient_balance(parts, [back, head, conn]).modules  # no names: no per-module view
    with pytest.raises(ValueError, match="2 names for 3 parameters"):
        gradient_balance(parts, [back, head, conn], names=names[:2])


def test_a_distillation_run_logs_the_balance_when_asked_and_trains_as_without_it(synth_dir, tiny_teacher_dir,
                                                                                  tmp_path, caplog):
    common = ["train.max_steps=3", "train.eval_every_epochs=0", "train.log_every=1"]
    runs = {}
    for probe in ("true", "false"):
        out = tmp_path / probe
        with caplog.at_level(logging.INFO, logger="detrdistill"):
            assert main(["distill", "--teacher", str(tiny_teacher_dir), *set_args(tiny_overrides(
                out, synth_dir, *common, f"train.probe_gradients={probe}", "train.probe_gradients_every=2"))]) == 0
        runs[probe] = out
    recs = read_metrics(runs["true"] / "metrics.jsonl")
    grads = [r for r in recs if "grad/own_norm" in r]
    assert [r["step"] for r in grads] == [1, 2] and grads[0]["grad/own_norm"] > 0  # the first step, then every 2nd
    assert {"grad/logits_ratio", "grad/feature_ratio", "grad/query_prior_ratio"} <= set(grads[0])
    assert {"grad/feature_ratio/backbone", "grad/logits_ratio/decoder"} <= set(grads[0])  # per module of the student
    assert -1.0 <= grads[0]["grad/query_prior_cos"] <= 1.0
    assert not any("grad/own_norm" in r for r in read_metrics(runs["false"] / "metrics.jsonl"))
    assert sum("gradient balance at step 1" in m for m in caplog.messages) == 1
    losses = {k: [r["loss"] for r in read_metrics(v / "metrics.jsonl") if "loss" in r] for k, v in runs.items()}
    assert losses["true"] == losses["false"] and len(losses["true"]) == 3
    a, b = (load_file(str(runs[k] / "model" / "model.safetensors")) for k in ("true", "false"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the probe changed no update


def test_the_engine_warns_once_per_run_about_a_term_taking_the_update_or_a_module_over(caplog):
    from types import SimpleNamespace

    from detrdistill.engine.trainer import _measure_balance, _report_balance

    back, head = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))

    class Task(torch.nn.Module):
        def named_trainable_parameters(self):
            return iter([("distiller.student.model.backbone.w", back), ("distiller.student.model.class_embed.w", head)])

    task, written = Task(), []
    run = SimpleNamespace(task=task, cfg=SimpleNamespace(optim=SimpleNamespace(grad_clip=1.0)), state={"step": 0},
                          metrics=SimpleNamespace(write=written.append), warned=set())
    with caplog.at_level(logging.WARNING, logger="detrdistill"):
        for step in range(3):
            run.state["step"] = step
            task.last_parts = {"student": back @ torch.tensor([1.0, 0.0]) + head @ torch.tensor([0.0, 10.0]),
                               "feature": back @ torch.tensor([0.0, 8.0]),
                               "query_prior": head @ torch.tensor([0.0, 40.0])}  # 4x overall
            _report_balance(run, _measure_balance(run)[1])
    assert [r["step"] for r in written] == [1, 2, 3] and written[0]["grad/feature_ratio/backbone"] == pytest.approx(8)
    module_warnings = [m for m in caplog.messages if "in the student's backbone is 8.0x" in m]
    assert len(module_warnings) == 1 and "distill.feature.weight" in module_warnings[0]
    overall = [m for m in caplog.messages if "query_prior term's gradient is 4.0x" in m]
    assert len(overall) == 1 and "at step 1" in overall[0]
