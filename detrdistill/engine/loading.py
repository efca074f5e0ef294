"""Deterministic, resumable data loading.

The sample order of epoch ``e`` is a permutation seeded by ``(seed, e)``; augmentation randomness of
sample ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``. So a run resumed at any batch sees exactly the
batches (and augmentations) an uninterrupted run would, whatever the number of workers.
Processes take interleaved slices of each global batch (rank r gets items r, r+W, ... of it).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class SeededDataset(Dataset):
    """Wraps a dataset so every item's random augmentation is a function of (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        s = (self.seed * 1_000_003 + self.epoch * 10_007 + int(i)) % (2**31)
        saved = random.getstate(), np.random.get_state(), torch.get_rng_state()
        random.seed(s)
        np.random.seed(s)
        torch.manual_seed(s)
        try:
            return self.dataset[i]
        finally:  # leave the caller's generators (model dropout, ...) untouched when num_workers == 0
            random.setstate(saved[0])
            np.random.set_state(saved[1])
            torch.set_rng_state(saved[2])


class EpochSampler(Sampler[int]):
    """This process's indices of one epoch, from global batch ``start_batch`` on (drop_last)."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.shuffle, self.epoch, self.start_batch = shuffle, 0, 0

    @property
    def global_batch(self) -> int:
        return self.bs * self.world

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def _indices(self) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        order = self._indices()
        for b in range(self.start_batch, self.batches_per_epoch()):
            chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
            yield from chunk[self.rank::self.world]

    def __len__(self) -> int:
        return (self.batches_per_epoch() - self.start_batch) * self.bs


class ShardSampler(Sampler[int]):
    """Evaluation: every index exactly once across processes (no padding duplicates)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.idx = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def train_loader(dataset, collate_fn, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int) -> tuple[DataLoader, EpochSampler, SeededDataset]:
    if len(dataset) < batch_size * world_size:
        raise ValueError(f"the training set has {len(dataset)} images, fewer than one global batch "
                         f"({batch_size} x {world_size} processes); lower train.batch_size")
    seeded = SeededDataset(dataset, seed)
    sampler = EpochSampler(len(dataset), batch_size, seed, rank, world_size)
    loader = DataLoader(seeded, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                        persistent_workers=False, drop_last=True)
    return loader, sampler, seeded


def eval_loader(dataset, collate_fn, batch_size: int, rank: int, world_size: int, num_workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      collate_fn=collate_fn, num_workers=num_workers)
