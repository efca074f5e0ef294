"""DistillationTrainer inside transformers' Trainer machinery: gradient accumulation divides the distillation loss
as the Trainer divides any per-batch loss, evaluation is the student alone, checkpoints resume the whole
distiller, bf16 puts the teacher in bf16, and what it cannot do is refused in one line."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from detrdistill import DETRDistiller, DistillationTrainer
from detrdistill.errors import CheckpointError, ConfigError
from tests.test_examples import models  # noqa: F401 (fixture)

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """The Trainer's accelerator settings (bf16, accumulation) live in accelerate's process-wide state: reset it
    after each test (as accelerate's own test cases do), so later runs may choose other settings."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()
    GradientState._reset_state()


def _recipe():
    """The example's dataset and collator (the transformers guide's)."""
    spec = importlib.util.spec_from_file_location("trainer_recipe", REPO / "examples" / "trainer_recipe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_trainer(models, synth_dir, out, seed=0, distill_config=None, **arguments):  # noqa: F811
    from transformers import AutoImageProcessor, AutoModelForObjectDetection, TrainingArguments

    recipe = _recipe()
    processor = AutoImageProcessor.from_pretrained(models / "student", size={"max_height": 64, "max_width": 64},
                                                   do_pad=True, pad_size={"height": 64, "width": 64})
    train = recipe.CocoDataset(str(synth_dir / "train.json"), str(synth_dir / "images"), processor)
    val = recipe.CocoDataset(str(synth_dir / "val.json"), str(synth_dir / "images"), processor)
    torch.manual_seed(seed)
    student = AutoModelForObjectDetection.from_pretrained(models / "student")
    arguments = {"save_strategy": "no", **arguments}
    args = TrainingArguments(output_dir=str(out), use_cpu=True, report_to="none", remove_unused_columns=False,
                             eval_do_concat_batches=False, per_device_train_batch_size=2, per_device_eval_batch_size=4,
                             learning_rate=1e-3, logging_steps=1, dataloader_num_workers=0, seed=seed, **arguments)
    trainer = DistillationTrainer(model=student, teacher=str(models / "teacher"), args=args, train_dataset=train,
                                  eval_dataset=val, data_collator=recipe.collate_fn, processing_class=processor,
                                  distill_config=distill_config)
    return trainer, student, recipe


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_gradient_accumulation_averages_the_micro_batches(models, synth_dir, tmp_path):  # noqa: F811
    trainer, student, recipe = make_trainer(models, synth_dir, tmp_path, gradient_accumulation_steps=2)
    assert trainer.student is student and isinstance(trainer.model, DETRDistiller)
    data = trainer.train_dataset
    batches = [recipe.collate_fn([data[0], data[1]]), recipe.collate_fn([data[2], data[3]])]
    model = trainer.model.train()
    single = []
    for b in batches:  # each micro-batch's own gradient
        model.zero_grad()
        model(**b).loss.backward()
        single.append(_grads(model))
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 2
    logged = [trainer.training_step(model, b) for b in batches]  # what train() does between two optimizer steps
    accumulated = _grads(model)
    assert accumulated.keys() == single[0].keys() and any(n.startswith("distiller.student.") for n in accumulated)
    for n, g in accumulated.items():
        torch.testing.assert_close(g, (single[0][n] + single[1][n]) / 2, rtol=1e-4, atol=1e-6)
    terms = trainer._term_counts
    assert set(terms) >= {"cls", "logits_cls", "feature", "query_prior_cls"} and set(terms.values()) == {2}  # both micro-batches, kept for the next log
    assert all(torch.isfinite(v) for v in logged)


def test_the_distillation_warm_up_follows_the_trainers_step(models, synth_dir, tmp_path):  # noqa: F811
    trainer, _, recipe = make_trainer(models, synth_dir, tmp_path, distill_config={"warmup_steps": 4})
    batch = recipe.collate_fn([trainer.train_dataset[0], trainer.train_dataset[1]])
    model = trainer.model.train()
    losses = {}
    for step in (0, 1, 3, 7):
        trainer.state.global_step = step
        torch.manual_seed(0)  # the same dropout and denoising draws at every step
        with torch.no_grad():
            _, out = trainer.compute_loss(model, batch, return_outputs=True)
        losses[step] = {k: v.item() for k, v in out.losses.items()}
    for step, scale in ((0, 0.25), (1, 0.5), (3, 1.0)):  # min(1, (step + 1) / 4)
        assert losses[step]["cls"] == pytest.approx(losses[7]["cls"], rel=1e-6)  # the student's own: never scaled
        assert losses[step]["logits_cls"] == pytest.approx(scale * losses[7]["logits_cls"], rel=1e-5)
        assert losses[step]["feature"] == pytest.approx(scale * losses[7]["feature"], rel=1e-5)


def test_stop_at_follows_the_trainers_length(models, synth_dir, tmp_path):  # noqa: F811
    """``stop_at=0.5`` of the Trainer's max_steps: the step at half the run has no distillation term."""
    trainer, _, recipe = make_trainer(models, synth_dir, tmp_path, distill_config={"stop_at": 0.5})
    batch = recipe.collate_fn([trainer.train_dataset[0], trainer.train_dataset[1]])
    model = trainer.model.train()
    trainer.state.max_steps = 8
    seen = {}
    for step in (3, 4):
        trainer.state.global_step = step
        with torch.no_grad():
            _, out = trainer.compute_loss(model, batch, return_outputs=True)
        seen[step] = set(out.losses)
    assert {"logits_cls", "feature"} <= seen[3] and not {"logits_cls", "feature"} & seen[4] and "cls" in seen[4]


def test_evaluation_is_the_student_alone(models, synth_dir, tmp_path):  # noqa: F811
    trainer, student, recipe = make_trainer(models, synth_dir, tmp_path)
    metrics = trainer.evaluate()
    batch = recipe.collate_fn([trainer.eval_dataset[i] for i in range(len(trainer.eval_dataset))])  # one eval batch
    student.eval()
    with torch.no_grad():
        own = student(**batch).loss  # the plain recipe's eval loss: the student's own transformers loss
    assert metrics["eval_loss"] == pytest.approx(own.item(), rel=1e-5)
    out = trainer.predict(trainer.eval_dataset)
    assert len(out.predictions) == 1 and out.predictions[0][1].shape[:2] == (4, student.config.num_queries)


def test_a_checkpoint_resumes_the_whole_distiller(models, synth_dir, tmp_path):  # noqa: F811
    first, _, _ = make_trainer(models, synth_dir, tmp_path / "a", max_steps=2, save_strategy="steps", save_steps=2)
    first.train()
    saved = first.model.checkpoint_state_dict()
    ckpt = tmp_path / "a" / "checkpoint-2"
    assert (ckpt / "distillation_state.pt").is_file() and (ckpt / "model.safetensors").is_file()

    other, _, _ = make_trainer(models, synth_dir, tmp_path / "b", seed=5, max_steps=3)
    fresh = other.model.checkpoint_state_dict()
    assert any(not torch.equal(fresh[k], saved[k]) for k in saved)  # connectors start elsewhere
    other._load_from_checkpoint(str(ckpt))
    loaded = other.model.checkpoint_state_dict()
    assert loaded.keys() == saved.keys() and all(torch.equal(loaded[k], saved[k]) for k in saved)
    other.train(resume_from_checkpoint=str(ckpt))  # optimizer, schedule and step come back; one step is left
    assert other.state.global_step == 3
    with pytest.raises(CheckpointError, match="no distillation_state.pt"):
        other._load_from_checkpoint(str(tmp_path))


def test_bf16_puts_the_teacher_in_bf16(models, synth_dir, tmp_path):  # noqa: F811
    trainer, _, _ = make_trainer(models, synth_dir, tmp_path, bf16=True, max_steps=1)
    assert trainer.model.distill_config.teacher_dtype == "bfloat16"
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any("loss/feature" in r for r in trainer.state.log_history)


def test_what_the_trainer_cannot_do_is_refused(models, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="model= "):
        DistillationTrainer(teacher=str(models / "teacher"))
    with pytest.raises(ConfigError, match="model_init is not supported"):
        DistillationTrainer(None, None, teacher=str(models / "teacher"), model_init=lambda: None)


def test_the_term_cap_is_refused_with_what_to_do_instead(models, synth_dir, tmp_path):  # noqa: F811
    with pytest.raises(ConfigError, match="max_term_ratio is applied by detrdistill's own engine.*term_weights"):
        make_trainer(models, synth_dir, tmp_path, distill_config={"max_term_ratio": 1.0})
