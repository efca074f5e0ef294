"""Shared fixtures: tiny configs that train in seconds on 2 CPU cores."""
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if "DETRDISTILL_CACHE_DIR" not in os.environ:  # the decode cache of test runs never lands in the user's ~/.cache
    import tempfile
    os.environ["DETRDISTILL_CACHE_DIR"] = tempfile.mkdtemp(prefix="detrdistill-test-cache-")
torch.set_num_threads(min(2, os.cpu_count() or 1))


def _shared_data() -> str | None:
    """The real datasets for the tests: $DETRDISTILL_DATA, else shared/data beside or above the repository."""
    repo = Path(__file__).resolve().parents[1]
    for cand in (os.environ.get("DETRDISTILL_DATA"), repo / "shared" / "data", repo.parent / "shared" / "data"):
        if cand and (Path(cand) / "bccd").is_dir():
            return str(cand)
    return None


if not os.environ.get("DETRDISTILL_DATA") and _shared_data():  # configs' ${DETRDISTILL_DATA} paths resolve in tests
    os.environ["DETRDISTILL_DATA"] = _shared_data()

TINY = [
    "data.synthetic=true", "data.synth_images=16", "data.synth_size=64", "data.min_size=[64]", "data.max_size=64",
    "data.eval_size=64", "data.crop=0.0", "data.num_workers=0",
    "model.family=deformable_detr", "model.num_queries=10", "model.d_model=32", "model.encoder_layers=1",
    "model.decoder_layers=2", "model.ffn_dim=64", "model.num_heads=2", "model.num_feature_levels=2",
    "model.backbone.embedding_size=8", "model.backbone.hidden_sizes=[8,16,32,64]", "model.backbone.depths=[1,1,1,1]",
    "optim.lr=1e-3", "optim.warmup_steps=2", "optim.grad_clip=1.0",
    "train.batch_size=4", "train.log_every=1", "train.progress=false", "train.device=cpu",
]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: extra intra-op threads only add OpenMP overhead (10-100x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_overrides(output_dir, synth_dir, *extra):
    return TINY + [f"train.output_dir={output_dir}", f"data.synth_dir={synth_dir}", *extra]


def set_args(overrides):
    """``["a=1", "b=2"]`` -> ``["--set", "a=1", "--set", "b=2"]`` (the CLI's override flags)."""
    return sum((["--set", o] for o in overrides), [])


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """One synthetic dataset shared by the training tests (generated once)."""
    from detrdistill.data import make_synthetic_coco
    d = tmp_path_factory.mktemp("synth")
    make_synthetic_coco(d, num_train=16, num_val=4, size=64, seed=0)
    return d


@pytest.fixture(scope="session")
def tiny_teacher_dir(synth_dir, tmp_path_factory):
    """A teacher trained 2 steps on the synthetic set (64-wide, 3 decoder layers, 15 queries), for tests that need a
    distillation run's wiring rather than a good teacher (trained once)."""
    from detrdistill.cli import main
    out = tmp_path_factory.mktemp("tiny_teacher")
    extra = ["model.d_model=64", "model.decoder_layers=3", "model.num_queries=15", "train.eval_every_epochs=0",
             "train.max_steps=2"]
    assert main(["train", *set_args(tiny_overrides(out, synth_dir, *extra))]) == 0
    return out / "model"
