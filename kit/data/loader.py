"""Batches for training and prediction, prepared by worker processes beside the model.

Augmentation randomness. albumentations 2.0.8 keeps its own generators inside each transform
(`A.Compose(seed=None)` seeds them from OS entropy once, at construction); it ignores numpy/random/torch
global seeds and has no DataLoader-worker hook of its own. Left alone, every forked worker inherits the same
generator state, so worker 0 and worker 1 apply identical augmentations, and nothing is reproducible. Worse,
`Compose(seed=s)` seeds every child transform with the same `s`, so two p=0.5 flips always fire together.
So kit reseeds the pipeline itself, with one shared generator (`Compose.set_random_state`):
- with workers: `worker_init_fn` uses the worker's torch seed (base seed drawn from the loader's seeded
  generator, plus the worker id): different per worker, reproducible from `seed`. Workers are persistent,
  so their generators run on from one epoch to the next and every epoch is augmented differently;
- without workers: each new epoch (iterator) draws a seed from the same loader generator.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from kit.data.images import load_item
from kit.data.sources import ImageTable


class ImageDataset(Dataset):
    """Rows `indices` of `table`; an item is (image float32 [3, H, W], label or -1, row index in table)."""

    def __init__(self, table: ImageTable, indices, transform):
        self.table = table
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        row = int(self.indices[i])
        image = self.transform(image=load_item(self.table.items[row]))["image"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1))
        label = -1 if self.table.labels is None else int(self.table.labels[row])
        return image.float(), label, row

    def seed_augmentation(self, seed: int) -> None:
        """Reseed the transform's random state (one generator shared by all its steps)."""
        seed_augmentation(self.transform, seed)


def seed_augmentation(transform, seed: int) -> None:
    if not hasattr(transform, "set_random_state"):
        return
    ss = np.random.SeedSequence(int(seed) % (1 << 64))
    py_seed = int(ss.generate_state(2, np.uint64)[1])
    transform.set_random_state(np.random.default_rng(ss), random.Random(py_seed))


def _worker_init(worker_id: int) -> None:
    info = get_worker_info()
    dataset = info.dataset
    if hasattr(dataset, "seed_augmentation"):
        dataset.seed_augmentation(info.seed)  # torch: base seed of this loader's iterator + worker_id


class _SeededLoader(DataLoader):
    """Without workers, reseeds the augmentation from the loader's own generator at every epoch."""

    def __iter__(self):
        if self.num_workers == 0 and hasattr(self.dataset, "seed_augmentation"):
            seed = int(torch.empty((), dtype=torch.int64).random_(generator=self.generator).item())
            self.dataset.seed_augmentation(seed)
        return super().__iter__()


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                drop_last: bool = False) -> DataLoader:
    """A DataLoader whose order and augmentations are a function of `seed` (and the worker count)."""
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    workers = num_workers > 0
    return _SeededLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers, drop_last=drop_last,
        generator=generator, worker_init_fn=_worker_init if workers else None,
        persistent_workers=workers,  # workers (and their generators) live for the loader's lifetime
        prefetch_factor=2 if workers else None,  # 2 batches per worker queued ahead of the model
        pin_memory=torch.cuda.is_available())
