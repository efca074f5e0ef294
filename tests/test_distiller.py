"""The Distiller on tiny Deformable DETR models (teacher d_model 64, student 32, ~30 queries, 64 px images)."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForObjectDetection

from detrdistill.config import BackboneConfig, DistillConfig, ModelConfig
from detrdistill.distillation import Distiller, check_compatible
from detrdistill.errors import ConfigError
from detrdistill.models.families import get_adapter
from detrdistill.models.build import build_model
from detrdistill.ops.criterion import SetCriterion

ID2LABEL = {0: "cat", 1: "dog", 2: "bird"}
BACKBONE = BackboneConfig(embedding_size=8, hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1])
ALL_ON = {"contrastive": {"enabled": True, "proj_dim": 32}, "fitnet": {"enabled": True},
          "logit_kd": {"enabled": True}}
DETECTION_KEYS = {"cls", "bbox", "giou"}
DISTILL_KEYS = {"logits_cls", "logits_bbox", "logits_giou", "feature", "query_prior_cls", "query_prior_bbox",
                "query_prior_giou", "contrastive", "fitnet", "logit_kd"}


def model_cfg(d_model=32, queries=20, layers=2, levels=4, dropout=0.0):
    return ModelConfig(family="deformable_detr", d_model=d_model, num_heads=4, ffn_dim=64, encoder_layers=1,
                       decoder_layers=layers, num_queries=queries, num_feature_levels=levels, dropout=dropout,
                       backbone=BACKBONE)


def make(cfg, id2label=ID2LABEL, seed=0):
    torch.manual_seed(seed)
    return get_adapter(build_model(cfg, id2label))


@pytest.fixture(scope="module")
def teacher():
    return make(model_cfg(d_model=64, queries=30, layers=3, dropout=0.1), seed=1)


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 64, 64, generator=g)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 48:] = 0  # image 1 is padded on the right
    targets = [{"class_labels": torch.tensor([0, 2]),
                "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.2]]), "size": torch.tensor([64, 64])},
               {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4),
                "size": torch.tensor([64, 48])}]
    return x, mask, targets


@pytest.fixture(scope="module")
def criterion():
    return SetCriterion(len(ID2LABEL))


def test_gradients_reach_student_never_teacher(teacher, batch, criterion):
    student = make(model_cfg())
    dist = Distiller(teacher, student, DistillConfig(**ALL_ON))
    dist.train()
    teacher_ids = {id(p) for p in teacher.parameters()}
    params = dist.trainable_parameters()
    assert params and not teacher_ids & {id(p) for p in params}
    names = {n for n, _ in dist.named_trainable_parameters()}
    for part in ("student.", "feature_loss.adapters.", "query_projection.", "contrastive_loss.", "fitnet_loss."):
        assert any(n.startswith(part) for n in names), part
    before_t = {k: v.clone() for k, v in teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in student.state_dict().items()}

    opt = torch.optim.AdamW(params, lr=1e-3)
    out = dist(*batch, criterion)
    assert torch.isfinite(out.loss)
    assert set(out.loss_dict) == DETECTION_KEYS | DISTILL_KEYS
    total = sum(v for v in out.loss_dict.values())
    assert torch.allclose(total, out.loss.detach(), rtol=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert not any(p.requires_grad for p in teacher.parameters())
    # every distillation module and the student backbone / decoder / heads get a gradient
    grads = {n: p.grad for n, p in dist.named_trainable_parameters()}
    for part in ("feature_loss.adapters.", "query_projection.", "contrastive_loss.student_head.",
                 "student.model.model.backbone.", "student.model.model.decoder.", "student.model.class_embed."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(part)), part
    opt.step()
    assert all(torch.equal(v, before_t[k]) for k, v in teacher.state_dict().items())
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, before_s[k])]
    assert len(changed) > 10


def test_teacher_always_in_eval_mode(teacher, batch):
    dist = Distiller(teacher, make(model_cfg()))
    dist.train()
    assert dist.training and dist.student.training
    assert not any(m.training for m in teacher.modules())
    teacher.train()                      # even if someone flips it, the teacher forward runs in eval mode
    x, mask, targets = batch
    a = dist.teacher_forward(x, mask, targets)
    b = dist.teacher_forward(x, mask, targets)
    assert not teacher.training
    assert torch.equal(a.logits, b.logits)  # dropout 0.1 in the teacher: eval mode makes it deterministic
    assert a.assignments is not None and a.assignments.shape == (3, 2, 30)
    assert (a.assignments[:, 1] == -1).all()  # empty-GT image: every teacher query is background
    assert not a.logits.requires_grad


@pytest.mark.slow  # every term over many model pairs
@pytest.mark.parametrize("queries,layers,variant", [(20, 2, "all"), (40, 3, "pos_neg"), (30, 4, "all")])
def test_unequal_queries_depths_widths_every_term(teacher, batch, criterion, queries, layers, variant):
    student = make(model_cfg(queries=queries, layers=layers))
    cfg = DistillConfig(**ALL_ON, logits={"variant": variant})
    dist = Distiller(teacher, student, cfg)
    dist.train()
    out = dist(*batch, criterion)
    expected = DETECTION_KEYS | DISTILL_KEYS | ({"logits_neg"} if variant == "pos_neg" else set())
    assert set(out.loss_dict) == expected
    assert all(torch.isfinite(v) for v in out.loss_dict.values())
    assert out.stage_map[-1] == 2 and len(out.stage_map) == layers
    assert out.matching.shape == (layers, 2, queries)
    assert ((out.matching >= 0).sum(-1) == min(queries, 30)).all()
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_terms_can_be_disabled_and_weighted(teacher, batch, criterion):
    off = {"logits": {"enabled": False}, "feature": {"enabled": False}, "query_prior": {"enabled": False}}
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(**off))
    out = dist(*batch, criterion)
    assert set(out.loss_dict) == DETECTION_KEYS
    assert torch.allclose(out.loss, out.student.loss)
    d1 = Distiller(teacher, make(model_cfg()), DistillConfig(feature={"weight": 1.0}))
    d3 = Distiller(teacher, make(model_cfg()), DistillConfig(feature={"weight": 3.0}))
    d1.eval(), d3.eval()
    f1, f3 = d1(*batch, criterion).loss_dict["feature"], d3(*batch, criterion).loss_dict["feature"]
    assert f1 > 0 and torch.allclose(f3, 3 * f1, rtol=1e-4)


def test_export_is_a_plain_student(teacher, batch, criterion, tmp_path):
    s_cfg = model_cfg()
    student = make(s_cfg)
    dist = Distiller(teacher, student, DistillConfig(**ALL_ON))
    dist.train()
    opt = torch.optim.AdamW(dist.trainable_parameters(), lr=1e-3)
    dist(*batch, criterion).loss.backward()
    opt.step()
    path = dist.export_student(tmp_path / "student")
    reloaded = AutoModelForObjectDetection.from_pretrained(path).eval()
    fresh = build_model(s_cfg, ID2LABEL)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(reloaded) == n(fresh) == n(student.model)
    assert set(reloaded.state_dict()) == set(dist.student_state_for_export()) == set(fresh.state_dict())
    student.eval()
    x, mask, _ = batch
    with torch.no_grad():
        a = student.model(pixel_values=x, pixel_mask=mask)
        b = reloaded(pixel_values=x, pixel_mask=mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)


def test_label_map_mismatch_is_a_clear_error(teacher):
    # a teacher lacking one of the student's classes (by name): refused, naming it
    other = make(model_cfg(), id2label={0: "cat", 1: "dog", 2: "horse"})
    with pytest.raises(ValueError, match="lacks 1 .*'horse'"):
        Distiller(teacher, other)
    with pytest.raises(ValueError, match="no class in common"):
        check_compatible(teacher, make(model_cfg(), id2label={0: "car", 1: "bus"}))
    # a student not built for the dataset's label map
    with pytest.raises(ValueError, match="student's label map differs from the dataset's"):
        check_compatible(teacher, make(model_cfg()), {0: "cat", 1: "dog", 2: "bird", 3: "fish"})
    assert check_compatible(teacher, make(model_cfg()), {"0": "cat", "1": "dog", "2": "bird"}) is None  # str keys
    # a subset of the teacher's classes in another order: mapped by name
    cmap = check_compatible(teacher, make(model_cfg(), id2label={0: "bird", 1: "cat"}))
    assert cmap.index.tolist() == [2, 0]


def test_reuse_memory_false_is_refused(teacher):
    with pytest.raises(NotImplementedError, match="reuse_memory"):
        Distiller(teacher, make(model_cfg()), DistillConfig(query_prior={"reuse_memory": False}))


def test_level_count_mismatch_and_bf16_teacher(teacher, batch, criterion):
    student = make(model_cfg(levels=3))
    dist = Distiller(teacher, student, DistillConfig(teacher_dtype="bfloat16", fitnet={"enabled": True}))
    # student levels are strides 8/16/32, the teacher's 8/16/32/64: the first three pair up
    assert dist.feature_loss.level_pairs == [(0, 0), (1, 1), (2, 2)]
    assert any(isinstance(a, torch.nn.Conv2d) for a in dist.feature_loss.adapters)  # 32 -> 64 channels
    dist.train()
    out = dist(*batch, criterion)
    assert out.teacher.logits.dtype == torch.float32
    assert all(torch.isfinite(v) for v in out.loss_dict.values()) and out.loss_dict["feature"] > 0
    out.loss.backward()
    assert dist.feature_loss.adapters[0].weight.grad.abs().sum() > 0


def test_warmup_ramps_the_distillation_terms_not_the_student_loss(teacher, batch, criterion):
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(warmup_steps=4))
    dist.train()
    outs = {}
    for step in (0, 1, 3, 10):
        dist.step = step
        outs[step] = dist(*batch, criterion).loss_dict
    full = outs[10]
    terms = [k for k in full if k not in DETECTION_KEYS]
    assert terms and all(full[k] > 0 for k in terms)
    for step, frac in ((0, 0.25), (1, 0.5), (3, 1.0)):
        for k in terms:
            assert torch.allclose(outs[step][k], frac * full[k], rtol=1e-4), (step, k)
        for k in DETECTION_KEYS:
            assert torch.allclose(outs[step][k], full[k], rtol=1e-5), (step, k)
    dist.step = 0
    assert dist.term_scale() == 0.25
    dist.eval()
    assert dist.term_scale() == 1.0
    no_warmup = Distiller(teacher, make(model_cfg()), DistillConfig())
    no_warmup.train()
    assert no_warmup.term_scale() == 1.0


def test_after_stop_at_the_step_is_the_students_alone_without_a_teacher_forward(teacher, batch, criterion,
                                                                                   monkeypatch):
    """``stop_at=0.5`` of a 10-step run: steps 0-4 distil (the cosine decay lowers the terms' weight), steps 5-9 run
    neither the teacher nor a term, and their loss is exactly the student's own loss on the batch."""
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(decay="cosine", stop_at=0.5)).train()
    dist.total_steps = 10
    dist.step = 0
    first = dist(*batch, criterion)
    dist.step = 3
    later = dist(*batch, criterion)
    terms = [k for k in first.loss_dict if k not in DETECTION_KEYS]
    assert terms and all(0 < later.loss_dict[k] < first.loss_dict[k] for k in terms)  # decaying, still on
    calls = []
    monkeypatch.setattr(dist, "teacher_forward", lambda *a, **k: calls.append(1))
    dist.step = 5
    out = dist(*batch, criterion)
    assert calls == [] and out.teacher is None and set(out.loss_dict) == DETECTION_KEYS
    assert not set(terms) & set(out.loss_dict) and set(out.parts) == {"student"}
    own = criterion(out.student.logits, out.student.boxes, batch[2])
    torch.testing.assert_close(out.loss, own.loss)
    out.loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dist.student.parameters())
    assert all(p.grad is None for p in dist.teacher.parameters())
    dist.total_steps = None  # the schedule needs the run's length: a clear error, not a silent full weight
    with pytest.raises(ConfigError, match="need the run's length"):
        dist(*batch, criterion)


def test_a_warmup_nobody_steps_counts_the_training_forwards(teacher, batch, criterion):
    """A user's own loop that never sets ``distiller.step`` still gets the ramp (1/4, 2/4, ... per training forward),
    not 1/N for the whole run; an eval forward does not count; once the step is set, it is the caller's."""
    dist = Distiller(teacher, make(model_cfg()), DistillConfig(warmup_steps=4))
    dist.train()
    seen = []
    for _ in range(5):
        seen.append(dist.term_scale())
        dist(*batch, criterion)
    assert seen == [0.25, 0.5, 0.75, 1.0, 1.0]
    dist.eval()
    with torch.no_grad():
        dist(*batch, criterion)
    assert dist.step == 5
    dist.train()
    dist.step = 1  # the engine / a user's loop takes over: forwards no longer advance it
    dist(*batch, criterion)
    dist(*batch, criterion)
    assert dist.step == 1 and dist.term_scale() == 0.5
