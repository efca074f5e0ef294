"""Engine pieces without training: COCO evaluation, lr schedule, param groups, checkpoints, sampler."""
import copy
import itertools
import json
import os
import random
from pathlib import Path

import pytest
import torch
from pycocotools.coco import COCO

from detrdistill.config import OptimConfig
from detrdistill.engine.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from detrdistill.engine.evaluator import STAT_KEYS, coco_stats, postprocess, to_coco_results
from detrdistill.engine.loading import SeededDataset, StepSampler
from detrdistill.engine.optim import build_optimizer, build_scheduler, lr_factor


def _fixture_gt(seed=0, n_img=6, n_cat=3):
    rng = random.Random(seed)
    images, anns, aid = [], [], 1
    for i in range(1, n_img + 1):
        images.append({"id": i, "file_name": f"{i}.png", "width": 320, "height": 240})
        for _ in range(rng.randint(1, 5)):
            w, h = rng.uniform(8, 150), rng.uniform(8, 120)
            x, y = rng.uniform(0, 320 - w), rng.uniform(0, 240 - h)
            anns.append({"id": aid, "image_id": i, "category_id": rng.randint(1, n_cat), "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            aid += 1
    cats = [{"id": c, "name": f"c{c}"} for c in range(1, n_cat + 1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": cats}
    coco.createIndex()
    return coco


def test_perfect_predictions_score_100_and_shifted_less():
    gt = _fixture_gt()
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt.dataset["annotations"]]
    stats = coco_stats(gt, perfect)
    assert set(stats) == set(STAT_KEYS) | {f"AP/{c['name']}" for c in gt.dataset["categories"]}
    assert stats["AP"] == pytest.approx(100.0) and stats["AP50"] == pytest.approx(100.0)
    shifted = [dict(d, bbox=[d["bbox"][0] + 0.3 * d["bbox"][2], d["bbox"][1], d["bbox"][2], d["bbox"][3]])
               for d in perfect]
    s2 = coco_stats(gt, shifted)
    assert s2["AP"] < 90.0 and s2["AP75"] < stats["AP75"]
    assert coco_stats(gt, [])["AP"] == 0.0


@pytest.mark.parametrize("backend", ["pycocotools", "faster_coco_eval"])
def test_no_detections_score_0_where_there_is_ground_truth_and_stay_undefined_elsewhere(backend):
    """No detections at all: AP 0 for every area range and class with ground truth, and no value (COCO's -1) for an
    area range without any, as with detections."""
    if backend == "faster_coco_eval":
        pytest.importorskip("faster_coco_eval")
    gt = _fixture_gt()
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["area"] > 96 ** 2]
    gt.createIndex()
    images, categories = copy.deepcopy(gt.dataset["images"]), copy.deepcopy(gt.dataset["categories"])
    stats = coco_stats(gt, [], backend=backend)
    # the empty result set shares gt's image and category records: scoring must leave them as they were
    assert gt.dataset["images"] == images and gt.dataset["categories"] == categories
    assert stats["AP"] == 0.0 and stats["APl"] == 0.0 and stats["AR100"] == 0.0
    assert not {"APs", "APm", "ARs", "ARm"} & set(stats), stats
    with_gt = {gt.cats[a["category_id"]]["name"] for a in gt.dataset["annotations"]}
    assert {k for k in stats if k.startswith("AP/")} == {f"AP/{c}" for c in with_gt}
    assert all(stats[f"AP/{c}"] == 0.0 for c in with_gt)


def test_a_stat_coco_cannot_define_is_left_out_and_written_as_null(tmp_path):
    """No small objects in the ground truth: COCO's APs / ARs are -1 (undefined), not 0; they are left out of the
    stats and written as null in eval.json."""
    import json

    from detrdistill.engine.evaluator import write_eval_json
    gt = _fixture_gt()
    large = [a for a in gt.dataset["annotations"] if a["area"] > 96 ** 2]
    assert large
    gt.dataset["annotations"] = large
    gt.createIndex()
    dets = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
            for a in large]
    stats = coco_stats(gt, dets)
    assert stats["AP"] == pytest.approx(100.0) and stats["APl"] == pytest.approx(100.0)
    assert not {"APs", "APm", "ARs", "ARm"} & set(stats), stats
    write_eval_json(tmp_path / "eval.json", stats)
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["APs"] is None and written["ARm"] is None and written["APl"] == pytest.approx(100.0)


def test_pycocotools_and_faster_coco_eval_agree():
    pytest.importorskip("faster_coco_eval")
    gt = _fixture_gt(seed=3)
    rng = random.Random(1)
    dets = []
    for a in gt.dataset["annotations"]:
        x, y, w, h = a["bbox"]
        dets.append({"image_id": a["image_id"], "category_id": rng.choice([a["category_id"], 1]),
                     "bbox": [x + rng.uniform(-6, 6), y + rng.uniform(-6, 6), w * rng.uniform(0.8, 1.2), h],
                     "score": rng.random()})
    dets.append({"image_id": 1, "category_id": 2, "bbox": [0, 0, 30, 30], "score": 0.99})
    a = coco_stats(gt, dets, "pycocotools")
    b = coco_stats(gt, dets, "faster_coco_eval")
    assert 0 < a["AP"] < 100
    for k in STAT_KEYS:
        assert a[k] == pytest.approx(b[k], abs=1e-6), k


def test_postprocess_maps_boxes_to_original_pixels():
    logits = torch.full((1, 3, 2), -10.0)
    logits[0, 1, 1] = 10.0  # query 1, class 1 is the only confident one
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.25, 0.5, 0.5, 1.0], [0.1, 0.1, 0.1, 0.1]]])
    det = postprocess(logits, boxes, torch.tensor([[200, 400]]), "sigmoid", top_k=2)[0]
    assert det["labels"][0].item() == 1
    assert torch.allclose(det["boxes"][0], torch.tensor([0.0, 0.0, 200.0, 200.0]))
    res = to_coco_results([det], [7], {0: 3, 1: 5})
    assert res[0]["category_id"] == 5 and res[0]["bbox"] == [0.0, 0.0, 200.0, 200.0]
    # softmax: the last column is no-object and never reported
    sm = torch.tensor([[[0.0, 5.0, 9.0]]])
    det = postprocess(sm, boxes[:, :1], torch.tensor([[10, 10]]), "softmax")[0]
    assert det["labels"].tolist() == [1]


def test_lr_schedule_warmup_then_decay():
    cfg = OptimConfig(warmup_steps=10, schedule="cosine", min_lr_ratio=0.0)
    f = [lr_factor(s, 100, cfg) for s in range(100)]
    assert f[0] < 0.01 and all(a < b for a, b in zip(f[:10], f[1:11]))
    assert f[10] == pytest.approx(1.0) and f[99] < 0.01 and all(a >= b for a, b in zip(f[10:], f[11:]))
    step = OptimConfig(warmup_steps=0, schedule="step", step_at=0.5, step_gamma=0.1)
    assert lr_factor(49, 100, step) == 1.0 and lr_factor(50, 100, step) == pytest.approx(0.1)


def test_param_groups_apply_backbone_multiplier():
    net = torch.nn.Module()
    net.backbone = torch.nn.Linear(2, 2)
    net.head = torch.nn.Linear(2, 2)
    net.frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    opt = build_optimizer(net, OptimConfig(lr=1e-3, backbone_lr_mult=0.1))
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"backbone": pytest.approx(1e-4), "rest": pytest.approx(1e-3)}
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n_opt == sum(p.numel() for p in net.parameters() if p.requires_grad)


def test_the_fp16_gradient_scaler_state_travels_with_the_checkpoint(tmp_path):
    """fp16's scaler backs its scale off after overflows; a resume must continue from that scale, not 65536."""
    net = torch.nn.Linear(3, 2)
    cfg = OptimConfig(warmup_steps=2)
    opt, scaler = build_optimizer(net, cfg), torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    sched = build_scheduler(opt, 10, cfg)
    scaler.load_state_dict({**scaler.state_dict(), "scale": 512.0, "_growth_tracker": 7})  # after some overflows
    save_checkpoint(tmp_path, net, opt, sched, {"step": 1, "elapsed_s": 0.0}, scaler=scaler)
    fresh = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    fresh.scale(torch.ones(()))  # a scaler in use has its scale tensor (as accelerate's by the first step)
    load_checkpoint(latest_checkpoint(tmp_path), torch.nn.Linear(3, 2), build_optimizer(net, cfg),
                    build_scheduler(opt, 10, cfg), scaler=fresh)
    assert fresh.get_scale() == 512.0 and fresh.state_dict()["_growth_tracker"] == 7
    # a checkpoint without one (bf16 / fp32 runs) leaves the scaler as it is
    save_checkpoint(tmp_path / "b", net, opt, sched, {"step": 1, "elapsed_s": 0.0})
    other = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16)
    load_checkpoint(latest_checkpoint(tmp_path / "b"), torch.nn.Linear(3, 2), build_optimizer(net, cfg),
                    build_scheduler(opt, 10, cfg), scaler=other)
    assert other.get_scale() == 2.0 ** 16


@pytest.mark.parametrize("family", ["lw_detr", "rf_detr", "deformable_detr"])
def test_a_neck_named_under_backbone_trains_at_the_base_rate(family):
    """LW-DETR / RF-DETR keep their projector (the neck) at ``model.backbone.projector``: the backbone multiplier is
    for the backbone the adapter names (the ViT), not for every parameter whose name says backbone."""
    from detrdistill.engine.optim import param_groups
    from detrdistill.models.backbone import backbone_parameter_ids
    from detrdistill.models.families import get_adapter
    from tests.registry_models import tiny_family_model

    adapter = get_adapter(tiny_family_model(family)).train()
    groups = {g["name"]: g for g in param_groups(adapter, OptimConfig(lr=1e-3, backbone_lr_mult=0.1))}
    ids = backbone_parameter_ids(adapter)
    assert {id(p) for p in groups["backbone"]["params"]} == ids
    names = {id(p): n for n, p in adapter.named_parameters()}
    rest = [names[id(p)] for p in groups["rest"]["params"]]
    assert any(".projector." in n for n in rest) == (family != "deformable_detr")


def test_checkpoint_roundtrip_and_tmp_ignored(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    cfg = OptimConfig(warmup_steps=2)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, 10, cfg)
    net(torch.randn(4, 3)).sum().backward()
    opt.step(); sched.step()
    save_checkpoint(tmp_path, net, opt, sched, {"step": 1, "elapsed_s": 0.0})
    (tmp_path / "checkpoints" / "step-00000009.tmp").mkdir()  # a crash mid-write
    assert latest_checkpoint(tmp_path).name == "step-00000001"
    expected_next = torch.rand(3)
    net2 = torch.nn.Linear(3, 2)
    opt2 = build_optimizer(net2, cfg)
    sched2 = build_scheduler(opt2, 10, cfg)
    state = load_checkpoint(latest_checkpoint(tmp_path), net2, opt2, sched2)
    assert state["step"] == 1
    assert torch.equal(net.weight, net2.weight)
    assert sched2.get_last_lr() == sched.get_last_lr()
    torch.manual_seed(123)  # RNG restored from the checkpoint, not from here
    state = load_checkpoint(latest_checkpoint(tmp_path), net2, opt2, sched2)
    # the RNG state was saved before expected_next was drawn, so the restored generator repeats it
    assert torch.equal(torch.rand(3), expected_next)
    meta = json.loads((latest_checkpoint(tmp_path) / "state.json").read_text())
    assert meta["world_size"] == 1
    from detrdistill.engine.checkpoint import CheckpointError
    with pytest.raises(CheckpointError, match="processes"):
        load_checkpoint(latest_checkpoint(tmp_path), net2, opt2, sched2, world_size=2)


def test_step_sampler_resumes_and_shards_across_epochs():
    full = StepSampler(10, batch_size=2, seed=1)
    stream = list(itertools.islice(iter(full), 30))  # 3 epochs of 5 batches, one endless iterator
    epochs = [stream[i:i + 10] for i in (0, 10, 20)]
    for e, keys in enumerate(epochs):  # each epoch: every sample once, keyed epoch * n + index
        assert sorted(k - 10 * e for k in keys) == list(range(10))
    assert [k % 10 for k in epochs[1]] != [k % 10 for k in epochs[2]]  # reshuffled per epoch
    assert stream[14:16] == full.batch_keys(7)
    resumed = StepSampler(10, batch_size=2, seed=1, start_step=7)  # resume mid-epoch 1
    assert list(itertools.islice(iter(resumed), 16)) == stream[14:30]
    r0, r1 = StepSampler(10, 1, 1, 0, 2), StepSampler(10, 1, 1, 1, 2)
    inter = [x for pair in zip(itertools.islice(iter(r0), 15), itertools.islice(iter(r1), 15)) for x in pair]
    assert inter == stream


def test_seeded_dataset_reads_the_epoch_from_the_key():
    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return i, torch.rand(1).item()

    ds = SeededDataset(Noise(), seed=3)
    assert ds[6][0] == 2 and ds[6] == ds[6]  # key 6 = epoch 1, sample 2; same augmentation every time
    assert ds[2][0] == 2 and ds[2][1] != ds[6][1]  # same sample, other epoch: other augmentation


def test_time_budget_fixes_the_schedule_length():
    from detrdistill.engine.trainer import _plan_to_budget

    class OneProcess:
        device = torch.device("cpu")

        def reduce(self, t, op):
            return t

    # 30 steps in 16 s, of which the warm-up took 6 s: 0.5 s/step after it -> 30 + 84 / 0.5 steps fit in 100 s
    state, plan = {"step": 30, "elapsed_s": 16.0}, {"total": 1000}
    _plan_to_budget(state, plan, budget_s=100.0, per_step=0.5, accelerator=OneProcess())
    assert plan["total"] == state["planned_total"] == 198
    cfg = OptimConfig(warmup_steps=0, schedule="cosine", min_lr_ratio=0.0)
    net = torch.nn.Linear(2, 2)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, lambda: plan["total"], cfg)
    for _ in range(197):
        opt.step()
        sched.step()
    assert sched.get_last_lr()[0] < 1e-3 * 0.01  # the cosine reached its floor at the planned end
    state, plan = {"step": 30, "elapsed_s": 1.0}, {"total": 100}
    _plan_to_budget(state, plan, budget_s=100.0, per_step=0.01, accelerator=OneProcess())
    assert plan["total"] == 100  # a budget never lengthens a run


def test_a_crash_while_saving_the_same_step_again_keeps_that_step(tmp_path, monkeypatch):
    """A time-budget stop right after a periodic save writes the same step twice, with keep=1 the only copy: a
    crash between moving the old copy aside and renaming the new one in must leave a loadable ``step-<N>``."""
    import detrdistill.engine.checkpoint as ckpt

    net, cfg = torch.nn.Linear(3, 2), OptimConfig(warmup_steps=2)
    opt = build_optimizer(net, cfg)
    sched = build_scheduler(opt, 10, cfg)
    save_checkpoint(tmp_path, net, opt, sched, {"step": 4, "elapsed_s": 0.0}, keep=1)
    real_replace, calls = os.replace, []

    def crash_on_publish(src, dst):
        if not Path(dst).name.startswith("step-"):  # state.json's own atomic write
            return real_replace(src, dst)
        calls.append(Path(dst).name)
        if Path(src).name.endswith(".tmp"):
            raise KeyboardInterrupt  # killed between the two renames
        real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", crash_on_publish)
    with torch.no_grad():
        net.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, net, opt, sched, {"step": 4, "elapsed_s": 1.0}, keep=1)
    monkeypatch.setattr(ckpt.os, "replace", real_replace)
    assert calls == ["step-00000004.replaced", "step-00000004"]
    found = list_checkpoints(tmp_path)
    assert [p.name for p in found] == ["step-00000004.replaced"]  # the old copy stands in for the step
    net2 = torch.nn.Linear(3, 2)
    assert load_checkpoint(found[0], net2, build_optimizer(net2, cfg), build_scheduler(opt, 10, cfg))["step"] == 4
    assert not torch.equal(net2.weight, net.weight)  # the copy published before the crash, not the new one
    # the next save of that step publishes the new copy and removes the stand-in
    save_checkpoint(tmp_path, net, opt, sched, {"step": 4, "elapsed_s": 1.0}, keep=1)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-00000004"]
    load_checkpoint(latest_checkpoint(tmp_path), net2, build_optimizer(net2, cfg), build_scheduler(opt, 10, cfg))
    assert torch.equal(net2.weight, net.weight)


def _model_dir(path: Path, text: str) -> None:
    path.mkdir()
    (path / "model.safetensors").write_text(text)


def test_export_atomically_swaps_the_model_dir_and_keeps_the_old_one_until_the_new_is_in(tmp_path, monkeypatch):
    """The previous model survives a failed export and a failed rename; a leftover ``.old`` (a crash between the
    renames) is cleared by the next export; a successful export leaves neither ``.tmp`` nor ``.old``."""
    from detrdistill.engine import run_dir
    from detrdistill.io_atomic import WriteFailedError

    model = tmp_path / "model"
    _model_dir(model, "v1")

    def fails(tmp):
        _model_dir(Path(tmp), "half")
        raise OSError(5, "simulated write failure")
    with pytest.raises(WriteFailedError):
        run_dir.export_atomically(fails, model)
    assert (model / "model.safetensors").read_text() == "v1" and sorted(p.name for p in tmp_path.iterdir()) == ["model"]

    real_replace = os.replace

    def replace_fails_into_place(src, dst):
        if Path(src).name == "model.tmp":
            raise OSError(28, "simulated rename failure")
        return real_replace(src, dst)
    monkeypatch.setattr(run_dir.os, "replace", replace_fails_into_place)
    with pytest.raises(OSError, match="rename failure"):
        run_dir.export_atomically(lambda tmp: _model_dir(Path(tmp), "v2"), model)
    assert (model / "model.safetensors").read_text() == "v1" and not (tmp_path / "model.old").exists()
    monkeypatch.setattr(run_dir.os, "replace", real_replace)

    _model_dir(tmp_path / "model.old", "stale")  # a crash between the two renames, last time
    run_dir.export_atomically(lambda tmp: _model_dir(Path(tmp), "v3"), model)
    assert (model / "model.safetensors").read_text() == "v3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
