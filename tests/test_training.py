"""End to end on CPU: loss goes down, train -> eval writes metrics and eval.json, exact resume after a
kill, and 2 processes (gloo) give the same loss as 1 process on the same global batch."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from detrdistill.cli import main
from detrdistill.config import load_config
from detrdistill.engine.evaluator import STAT_KEYS
from detrdistill.engine.metrics import read_metrics
from tests.cli_process import two_processes
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow  # trains through the CLI, kills a run, two processes


def _train_losses(path):
    return {r["step"]: r["loss"] for r in read_metrics(path) if "loss" in r}


def test_tiny_model_overfits_a_fixed_batch(synth_dir, tmp_path):
    from detrdistill.data import build_dataset, collate_fn
    from detrdistill.models.family_loss import student_criterion
    from detrdistill.models.families import get_adapter
    from detrdistill.models.build import build_model

    cfg = load_config(None, tiny_overrides(tmp_path, synth_dir))
    from detrdistill.config import SplitConfig
    ds = build_dataset(SplitConfig(ann_file=str(synth_dir / "train.json"), image_dir=str(synth_dir / "images")),
                       cfg.data, train=False)
    batch = collate_fn([ds[i] for i in range(4)])
    torch.manual_seed(0)
    adapter = get_adapter(build_model(cfg.model, ds.id2label))
    crit = student_criterion(cfg.loss, adapter)
    opt = torch.optim.AdamW(adapter.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        out = adapter(batch["pixel_values"], batch["pixel_mask"], targets=batch["labels"], criterion=crit)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.6 * losses[0], losses[::8]
    bb = [p for n, p in adapter.named_parameters() if "backbone" in n]
    assert bb and all(p.requires_grad for p in bb), "backbone must train (transformers freezes it by default)"


def test_train_then_eval_writes_metrics_and_eval_json(synth_dir, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", *sum((["--set", o] for o in tiny_overrides(out, synth_dir, "train.max_steps=4",
                                                                     "train.eval_every_epochs=0")), [])])
    assert rc == 0
    recs = read_metrics(out / "metrics.jsonl")
    train = [r for r in recs if "loss" in r]
    assert [r["step"] for r in train] == [1, 2, 3, 4]
    for r in train:
        assert {"step", "epoch", "lr", "loss", "loss/cls", "loss/bbox", "loss/giou"} <= set(r)
    assert any("eval/AP" in r for r in recs)
    ev = json.loads((out / "eval.json").read_text())
    assert set(STAT_KEYS) <= set(ev) and ev["AP"] is not None  # null only where COCO cannot define a stat
    assert all(ev[k] is None or 0.0 <= ev[k] <= 100.0 for k in STAT_KEYS)
    assert ev["train_seconds"] > 0 and ev["train_cpu_seconds"] > 0  # the cost of the run, wall and CPU
    assert (out / "model" / "config.json").is_file()
    rc = main(["eval", "--model", str(out / "model"), "--eval-dir", str(tmp_path / "ev"),
               *sum((["--set", o] for o in tiny_overrides(out, synth_dir)), [])])
    assert rc == 0
    ev2 = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert ev2["AP"] == pytest.approx(ev["AP"], abs=1e-6)  # same model, same val set, same numbers


def _cli(*args):
    return [sys.executable, "-m", "detrdistill.cli", *args]


def test_resume_after_kill_reproduces_the_uninterrupted_run(synth_dir, tmp_path):
    common = ["train.max_steps=12", "train.checkpoint_every_steps=2", "train.eval_every_epochs=0",
              "model.dropout=0.1", "data.hflip=0.5", "data.crop=0.5"]
    ref = tmp_path / "ref"
    assert main(["train", *sum((["--set", o] for o in tiny_overrides(ref, synth_dir, *common)), [])]) == 0
    ref_losses = _train_losses(ref / "metrics.jsonl")

    run = tmp_path / "run"
    sets = sum((["--set", o] for o in tiny_overrides(run, synth_dir, *common)), [])
    proc = subprocess.Popen(_cli("train", *sets), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpts = run / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if ckpts.is_dir() and any(p.name == "step-00000004" for p in ckpts.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "run finished before it could be killed: " + proc.stderr.read().decode()[-500:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(int(p.name.split("-")[1]) for p in ckpts.iterdir() if not p.name.endswith(".tmp"))
    assert killed_at < 12
    saved_cpu = json.loads((ckpts / f"step-{killed_at:08d}" / "state.json").read_text())["cpu_s"]
    res = subprocess.run(_cli("train", *sets, "--resume"), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    losses = _train_losses(run / "metrics.jsonl")
    assert sorted(losses) == list(range(1, 13))  # lines after the checkpoint were replaced, none doubled
    for step in range(killed_at + 1, 13):
        assert losses[step] == pytest.approx(ref_losses[step], rel=1e-5, abs=1e-6), step
    # the run's CPU seconds continue from the checkpoint's, they do not restart
    assert 0 < saved_cpu < json.loads((run / "eval.json").read_text())["train_cpu_seconds"]


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_processes_match_one_process_on_the_same_global_batch(synth_dir, tmp_path):
    # same-size images and no augmentation: both runs see identical tensors, only the sharding differs
    common = ["train.max_steps=3", "train.eval_every_epochs=0", "data.hflip=0.0"]
    one = tmp_path / "one"
    assert main(["train", *sum((["--set", o] for o in tiny_overrides(one, synth_dir, *common)), [])]) == 0
    two = tmp_path / "two"
    sets = sum((["--set", o] for o in tiny_overrides(two, synth_dir, *common, "train.batch_size=2")), [])
    two_processes("-m", "detrdistill.cli", "train", *sets, port_base=29500)
    l1, l2 = _train_losses(one / "metrics.jsonl"), _train_losses(two / "metrics.jsonl")
    assert sorted(l2) == [1, 2, 3]
    for step in (1, 2, 3):  # step 1: same loss; steps 2-3: same averaged gradients were applied
        assert l2[step] == pytest.approx(l1[step], rel=1e-4), (step, l1, l2)


def test_snapshots_keep_the_model_at_the_asked_steps_without_changing_training(synth_dir, tmp_path):
    from detrdistill.models.build import load_detector

    def weights(model_dir):
        return {k: v.clone() for k, v in load_detector(model_dir).state_dict().items()}

    common = ["train.max_steps=6", "train.eval_every_epochs=0"]
    plain = tmp_path / "plain"
    assert main(["train", *sum((["--set", o] for o in tiny_overrides(plain, synth_dir, *common)), [])]) == 0
    snap = tmp_path / "snap"
    sets = tiny_overrides(snap, synth_dir, *common, "train.snapshot_steps=[2,4,6]")
    assert main(["train", *sum((["--set", o] for o in sets), [])]) == 0
    assert sorted(p.name for p in (snap / "snapshots").iterdir()) == ["step-2", "step-4", "step-6"]
    final, at2, at4, at6 = (weights(d) for d in (snap / "model", snap / "snapshots" / "step-2",
                                                 snap / "snapshots" / "step-4", snap / "snapshots" / "step-6"))
    assert all(torch.equal(final[k], at6[k]) for k in final)  # the last snapshot is the final model
    assert any(not torch.equal(at2[k], at4[k]) for k in at2)  # earlier ones are earlier states
    assert (snap / "snapshots" / "step-2" / "preprocessor_config.json").is_file()  # deployable as they are
    reference = weights(plain / "model")  # snapshotting does not perturb training
    assert all(torch.equal(reference[k], final[k]) for k in final)
