"""The in-memory image cache (detrdistill.data.image_cache, ``data.cache_images``): identical batches with and
without it, its budget, copies handed out, nothing carried to spawned workers, and the config field."""
from __future__ import annotations

import pickle

import pytest
import torch
from PIL import Image, ImageDraw

from detrdistill.config import load_config
from detrdistill.data import build_dataset, build_transforms
from detrdistill.data.coco import CocoDetection
from detrdistill.data.image_cache import ImageCache
from detrdistill.engine.loading import SeededDataset
from detrdistill.errors import ConfigError


def _dataset(synth_dir, gib: float) -> CocoDetection:
    cfg = load_config(None, ["data.min_size=[48,56]", "data.max_size=64", "data.crop=0.5"])
    return CocoDetection(synth_dir / "train.json", synth_dir / "images", transforms=build_transforms(cfg.data, True),
                         cache_gib=gib)


def test_cached_batches_equal_uncached_over_two_epochs(synth_dir):
    plain, cached = SeededDataset(_dataset(synth_dir, 0.0), seed=3), SeededDataset(_dataset(synth_dir, 1.0), seed=3)
    n = len(plain)
    for key in list(range(n)) + list(range(n, 2 * n)):  # epoch 0 fills the cache, epoch 1 reads it
        (x0, t0), (x1, t1) = plain[key], cached[key]
        assert torch.equal(x0, x1), key
        assert torch.equal(t0["boxes"], t1["boxes"]) and torch.equal(t0["class_labels"], t1["class_labels"])
    cache = cached.dataset.image_cache
    assert len(cache) == n and cache.misses == n and cache.hits == n
    assert plain.dataset.image_cache is None


def test_budget_caps_what_is_kept(synth_dir):
    ds = _dataset(synth_dir, 0.0)
    one = ImageCache.nbytes(ds.decoded(0))
    small = ImageCache(one * 2 + one // 2)  # room for two images
    for i in range(5):
        got = small.get(i, lambda i=i: ds.decoded(i))
        assert torch.equal(torch.as_tensor(list(got.getdata())), torch.as_tensor(list(ds.decoded(i).getdata())))
    assert len(small) == 2 and small.used == 2 * one <= small.budget
    tiny = ImageCache(one - 1)
    tiny.get(0, lambda: ds.decoded(0))
    assert len(tiny) == 0 and tiny.used == 0


def test_callers_get_copies(synth_dir):
    ds = _dataset(synth_dir, 0.0)
    cache = ImageCache(1 << 30)
    first = cache.get(0, lambda: ds.decoded(0))
    before = list(first.getdata())
    ImageDraw.Draw(first).rectangle((0, 0, 20, 20), fill=(255, 0, 0))  # a transform drawing in place
    assert list(first.getdata()) != before
    assert list(cache.get(0, lambda: Image.new("RGB", (1, 1))).getdata()) == before


def test_pickled_cache_keeps_the_budget_not_the_images(synth_dir):
    ds = _dataset(synth_dir, 0.5)
    ds.decoded(0)
    assert len(ds.image_cache) == 1
    clone = pickle.loads(pickle.dumps(ds.image_cache))
    assert len(clone) == 0 and clone.used == 0 and clone.budget == ds.image_cache.budget == 2**29


def test_config_field_and_which_splits_cache(synth_dir):
    with pytest.raises(ConfigError, match="cache_images"):
        load_config(None, ["data.cache_images=-1"])
    cfg = load_config(None, ["data.cache_images=0.25"])
    split = type("S", (), {"ann_file": str(synth_dir / "train.json"), "image_dir": str(synth_dir / "images")})
    assert build_dataset(split, cfg.data, train=True).image_cache.budget == 2**28
    assert build_dataset(split, cfg.data, train=False).image_cache is None  # eval workers are short-lived
    with pytest.raises(ValueError, match=">= 0"):
        ImageCache(-1)


def test_resume_accepts_a_changed_cache_budget():
    from detrdistill.engine.run_dir import config_differences

    saved = load_config(None).model_dump(mode="json")
    cached = load_config(None, ["data.cache_images=2", "data.num_workers=3"]).model_dump(mode="json")
    assert config_differences(saved, cached) == []  # same pixels, same order: the run may resume
    other = load_config(None, ["data.cache_images=2", "data.max_size=96"]).model_dump(mode="json")
    assert config_differences(saved, other) == ["data.max_size"]
