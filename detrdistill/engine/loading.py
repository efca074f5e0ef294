"""Deterministic, resumable data loading.

Training reads one endless stream of global batches: global batch ``k`` is batch ``k % B`` of epoch
``k // B`` (``B`` batches per epoch, drop_last). The sample order of epoch ``e`` is a permutation seeded
by ``(seed, e)``; the augmentation randomness of sample ``i`` in epoch ``e`` is seeded by ``(seed, e, i)``.
So a run resumed at any step sees exactly the batches (and augmentations) an uninterrupted run would,
whatever the number of workers. Because the stream never ends, one DataLoader iterator (and its worker
processes) lives for the whole run: no worker restart at epoch boundaries.
Processes take interleaved slices of each global batch (rank r gets items r, r+W, ... of it).

Worker processes ignore SIGINT and SIGTERM (:func:`ignore_stop_signals`). A SIGTERM sent to the whole process group
(a scheduler or container stop, ``kill -TERM -PGID``) would otherwise kill them (torch's workers exit quietly only
when their own parent signals them), and torch then raises "DataLoader worker ... killed by signal" in the main
process in the middle of its stop-time checkpoint. Stopping is the main process's decision; workers exit when it
shuts the loader down, or on their own once it is gone (torch's watchdog). The price: torch's last resort at shutdown,
SIGTERM to a worker that did not exit within 5 s, no longer works, so a worker stuck in a read holds up the exit.
"""
from __future__ import annotations

import random
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from detrdistill.errors import ConfigError


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: SIGINT/SIGTERM are left to the main process (see the module note)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class SeededDataset(Dataset):
    """Wraps a dataset so item ``e * n + i`` is sample ``i`` augmented with randomness seeded by
    ``(seed, e, i)``: the epoch travels inside the index, so workers need no shared epoch state."""

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.dataset))
        s = (self.seed * 1_000_003 + epoch * 10_007 + i) % (2**31)
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


class StepSampler(Sampler[int]):
    """This process's keys (``epoch * n + index``) of every global batch from ``start_step`` on, endlessly."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 shuffle: bool = True, start_step: int = 0):
        self.n, self.bs, self.seed, self.rank, self.world = n, batch_size, seed, rank, world_size
        self.shuffle, self.start_step = shuffle, start_step

    @property
    def global_batch(self) -> int:
        return self.bs * self.world

    def batches_per_epoch(self) -> int:
        return self.n // self.global_batch

    def epoch_order(self, epoch: int) -> list[int]:
        """The sample order of ``epoch`` (every index once)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 7919 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def batch_keys(self, step: int) -> list[int]:
        """This process's keys of global batch ``step`` (0-based)."""
        epoch, b = divmod(step, self.batches_per_epoch())
        chunk = self.epoch_order(epoch)[b * self.global_batch:(b + 1) * self.global_batch]
        return [epoch * self.n + i for i in chunk[self.rank::self.world]]

    def __iter__(self):
        step, per_epoch = self.start_step, self.batches_per_epoch()
        while True:
            epoch, b = divmod(step, per_epoch)
            order = self.epoch_order(epoch)
            for b in range(b, per_epoch):
                chunk = order[b * self.global_batch:(b + 1) * self.global_batch]
                yield from (epoch * self.n + i for i in chunk[self.rank::self.world])
            step = (epoch + 1) * per_epoch


class ShardSampler(Sampler[int]):
    """Evaluation: every index exactly once across processes (no padding duplicates)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.idx = list(range(rank, n, world_size))

    def __iter__(self):
        return iter(self.idx)

    def __len__(self) -> int:
        return len(self.idx)


def train_loader(dataset, collate_fn, batch_size: int, seed: int, rank: int, world_size: int,
                 num_workers: int, start_step: int = 0) -> tuple[DataLoader, StepSampler]:
    """An endless loader of this process's batches from global step ``start_step`` on; iterate it once."""
    check_batch_fits(dataset, batch_size, world_size)
    sampler = StepSampler(len(dataset), batch_size, seed, rank, world_size, start_step=start_step)
    loader = DataLoader(SeededDataset(dataset, seed), batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                        num_workers=num_workers, pin_memory=torch.cuda.is_available(), drop_last=True,
                        worker_init_fn=ignore_stop_signals,
                        # its own generator: starting the iterator (after a resume too) never draws from the
                        # global RNG that model dropout uses; items are seeded by SeededDataset anyway
                        generator=torch.Generator().manual_seed(seed))
    return loader, sampler


def check_batch_fits(dataset, batch_size: int, world_size: int) -> None:
    """A training set smaller than one global batch is refused (before a run writes anything)."""
    if len(dataset) < batch_size * world_size:
        raise ConfigError(f"the training set has {len(dataset)} images, fewer than one global batch "
                         f"({batch_size} x {world_size} processes); lower train.batch_size")


def eval_loader(dataset, collate_fn, batch_size: int, rank: int, world_size: int, num_workers: int) -> DataLoader:
    """This process's share of ``dataset``, each image once. Its own generator: starting it (an evaluation in the
    middle of training) never draws from the global RNG, so a run resumed from the checkpoint saved before an
    evaluation continues exactly as the uninterrupted run (dropout, denoising noise)."""
    return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset), rank, world_size),
                      collate_fn=collate_fn, num_workers=num_workers, worker_init_fn=ignore_stop_signals,
                      generator=torch.Generator())
