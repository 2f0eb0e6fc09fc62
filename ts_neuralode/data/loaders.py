"""The data loaders of the in-memory data module: a dataset of series positions (the collator builds the batch from
the module's arrays) and, under DDP with a fixed training order, the sampler that keeps it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler


class SeriesIndexDataset(Dataset):
    """Yields positions into the DataModule's series arrays; the Collator builds the batch."""

    def __init__(self, indices: np.ndarray):
        self.indices = np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> int:
        return int(self.indices[i])


def series_loader(
    indices: np.ndarray,
    collate: Callable,
    batch_size: int,
    shuffle: bool,
    num_workers: int = 0,
    pin_memory: bool = False,
    ddp_trainer=None,
) -> DataLoader:
    """A loader over the series positions ``indices`` whose batches ``collate`` builds. ``ddp_trainer``: a DDP
    trainer whose ranks must read the series in a fixed order (rank r of N: positions r, r + N, ...); Lightning
    puts a *shuffling* DistributedSampler on a training loader under DDP, but keeps one given here."""
    dataset = SeriesIndexDataset(indices)
    sampler: DistributedSampler | None = None
    if ddp_trainer is not None:
        sampler = DistributedSampler(
            dataset, num_replicas=ddp_trainer.world_size, rank=int(ddp_trainer.global_rank), shuffle=False
        )
        shuffle = False
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        pin_memory=pin_memory,
    )


__all__ = ["SeriesIndexDataset", "series_loader"]
