"""Batches for training and prediction, prepared by worker processes beside the model.

Augmentation randomness. albumentations 2.0.8 keeps its own generators inside each transform
(`A.Compose(seed=None)` seeds them from OS entropy once, at construction); it ignores numpy/random/torch
global seeds and has no DataLoader-worker hook of its own, and `Compose(seed=s)` seeds every child transform
with the same `s`, so two p=0.5 flips would always fire together. So kit seeds the pipeline itself, per sample,
with one generator shared by its steps (`Compose.set_random_state`): the sampler, in the main process, yields
(position, seed) pairs with seed = f(loader seed, epoch, the sample's row in its table) and the order a
function of (loader seed, epoch). A batch is then the same with 0 or 8 workers, and epoch e is the same whether
or not epochs 0..e-1 ran before it in this process, which is what makes a resumed run exact.
`set_epoch(e)` fixes the next epoch (kit.train.fit calls it); without it each iteration is the next epoch.

Workers. `choose_num_workers` times the loader with each candidate worker count, the caller's training step
(`training_step(model)`) run on each batch in the main process, and keeps the fastest. Without a step it
times only counts the loader alone can rank (worker_candidates): on a CPU whose cores torch's threads use,
workers take cycles from training, and reading decoded images (kit.data.cache) in the main process wins.

Errors. A KitError raised while a worker reads a sample (an ImageReadError naming the file) reaches the caller
as the same class with its own one-line message, not torch's "Caught ... in DataLoader worker process 0"
wrapper around the worker's traceback.
"""
from __future__ import annotations

import copy
import os
import random
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from kit.data.sources import ImageTable
from kit.errors import KitError

# SeedSequence treats trailing zero words as absent ([s, 0] == [s]), so every entropy list starts with a tag
# and has a fixed length.
_ORDER_TAG, _SAMPLE_TAG = 0x6F72646572, 0x73616D706C65  # "order", "sample"


class Draw(NamedTuple):
    """An index the loader's sampler yields: dataset position and the augmentation seed of this sample."""
    position: int
    seed: int


class _Failure(NamedTuple):
    """A KitError raised in a worker, carried as data so that the main process can raise it as it was."""
    error: type
    message: str


class ImageDataset(Dataset):
    """Rows `indices` of `table`; an item is (image float32 [3, H, W], label or -1, row index in table).

    Indexed with an int, or with a Draw (position, seed): the transform is then seeded for this sample."""

    def __init__(self, table: ImageTable, indices, transform, targets: np.ndarray | None = None):
        self.table = table
        self.indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        self.transform = transform
        # what training learns for each table row (kit.task.train_targets); default: the table's class indices
        # (-1 where there are none: unlabelled rows, or targets that are not one class index a row)
        labels = table.labels
        if targets is None and labels is not None and labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer):
            targets = labels
        self.targets = targets

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i):
        if isinstance(i, Draw):
            seed_augmentation(self.transform, i.seed)
            try:
                return self._item(i.position)
            except KitError as e:  # returned, not raised: see _Failure
                return _Failure(type(e), str(e))
        return self._item(i)

    def _item(self, i: int):
        row = int(self.indices[i])
        image = self.transform(image=self.table.image(row))["image"]
        if not isinstance(image, torch.Tensor):
            image = torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1))
        t = -1 if self.targets is None else self.targets[row]
        label = int(t) if np.ndim(t) == 0 else torch.from_numpy(np.ascontiguousarray(t))
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


def sample_seed(seed: int, epoch: int, row: int) -> int:
    """The augmentation seed of table row `row` in epoch `epoch` of a loader seeded `seed` (64 bits)."""
    ss = np.random.SeedSequence([_SAMPLE_TAG, int(seed) % (1 << 64), int(epoch), int(row)])
    return int(ss.generate_state(1, np.uint64)[0])


def shard_length(n: int, shard: tuple[int, int] | None) -> int:
    """Positions an EpochSampler over n items gives one rank of shard (rank, size): n / size, rounded up."""
    return n if shard is None or shard[1] <= 1 else -(-n // shard[1])


class EpochSampler(Sampler):
    """Positions of `dataset` in an order fixed by (seed, epoch), each as a Draw with its sample's seed when the
    dataset can be seeded (ImageDataset), else as a plain int.

    shard=(rank, size): the positions rank, rank + size, ... of that order (one process of several, kit.distributed),
    the order first padded with its own head to a multiple of `size` so that every rank has as many batches: batch k
    of the ranks together is then batch k of the unsharded loader, with batch_size / size images on each rank."""

    def __init__(self, dataset, shuffle: bool, seed: int, shard: tuple[int, int] | None = None):
        self.dataset, self.shuffle, self.seed = dataset, shuffle, int(seed)
        self.shard = shard if shard is not None and shard[1] > 1 else None
        self.epoch = 0

    def __len__(self) -> int:
        return shard_length(len(self.dataset), self.shard)

    def __iter__(self):
        n, epoch = len(self.dataset), self.epoch
        order = np.arange(n)
        if self.shuffle:
            ss = np.random.SeedSequence([_ORDER_TAG, self.seed % (1 << 64), epoch])
            order = np.random.default_rng(ss).permutation(n)
        if self.shard is not None:
            rank, size = self.shard
            order = np.resize(order, len(self) * size)[rank::size]  # np.resize repeats the head to pad
        rows = getattr(self.dataset, "indices", None)
        seeded = hasattr(self.dataset, "seed_augmentation")
        for i in order.tolist():
            if seeded:
                row = int(rows[i]) if rows is not None else i
                yield Draw(i, sample_seed(self.seed, epoch, row))
            else:
                yield i


def _collate(samples):
    """[images, labels, rows]. Images that are HWC memory seen as CHW (what ToTensorV2 returns) are stacked as
    they lie, into a channels_last batch: one memcpy per image instead of a strided gather, and no NCHW ->
    channels_last conversion of every batch in the training loop (64 images of 64 px: 0.4 ms on one thread, 8 ms
    on 2 threads whose cores another process was using; the stack takes 0.2 ms). `.contiguous()` gives NCHW."""
    for s in samples:
        if isinstance(s, _Failure):
            return s
    images = [s[0] for s in samples]
    if not all(isinstance(x, torch.Tensor) and x.dim() == 3 and x.permute(1, 2, 0).is_contiguous() for x in images):
        return default_collate(samples)
    # default_collate puts a worker's batch in shared memory, so it reaches the main process without a copy
    batch = default_collate([x.permute(1, 2, 0) for x in images]).permute(0, 3, 1, 2)
    return [batch, *default_collate([s[1:] for s in samples])]


class EpochLoader(DataLoader):
    """A DataLoader over an EpochSampler: each iteration is one epoch (the next, or the one set_epoch gave)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._next_epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Make the next iteration epoch `epoch` (its order and augmentations depend on (seed, epoch) only)."""
        self._next_epoch = int(epoch)

    def __iter__(self):
        self.sampler.epoch = self._next_epoch
        self._next_epoch += 1
        return self._batches(super().__iter__())

    @staticmethod
    def _batches(batches):
        for batch in batches:
            if isinstance(batch, _Failure):
                raise batch.error(batch.message)
            yield batch


def make_loader(dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int,
                drop_last: bool = False, shard: tuple[int, int] | None = None) -> EpochLoader:
    """A DataLoader whose order and augmentations are a function of (`seed`, epoch), whatever the worker count;
    `shard` (rank, size): this process's share of them (EpochSampler)."""
    generator = torch.Generator()  # only torch's worker base seeds use it now; the sampler decides the rest
    generator.manual_seed(int(seed))
    workers = num_workers > 0
    return EpochLoader(
        dataset, batch_size=batch_size, sampler=EpochSampler(dataset, shuffle, seed, shard), num_workers=num_workers,
        drop_last=drop_last, collate_fn=_collate, generator=generator,
        persistent_workers=workers,  # workers live for the loader's lifetime, not one epoch
        prefetch_factor=2 if workers else None,  # 2 batches per worker queued ahead of the model
        pin_memory=torch.cuda.is_available())


# ---------------------------------------------------------------- workers, by measurement

WORKER_TIE = 0.05  # more workers must deliver 5% more images/s than fewer to be chosen (each costs memory)
MIN_TIMED = 2  # batches timed per candidate, however short `seconds` is
_TIMED_EPOCH = 100_000  # samples in the timing loader's one epoch: no epoch ends (and prefetch stalls) mid-timing


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def worker_candidates(cores: Optional[int] = None, *, device=None, step: bool = False) -> list[int]:
    """The worker counts worth timing on `cores` (default: those this process may run on) for training on
    `device` (default: cuda when available, else cpu).

    With a step (the training step is timed too): 0, 1, 2, 4, ... up to the cores. Without one, the counts the
    loader alone can rank: on a CPU whose cores torch's threads use for training, workers take cycles from
    training and none can win (on this 2-core machine: 0, untimed); with spare cores, 1, 2, 4, ... up to
    them (a worker on a spare core overlaps loading with training, which 0 workers never does); on an
    accelerator, 1, 2, 4, ... up to all cores but the main process's."""
    cores = cores or _cores()
    upto = [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= cores]
    if step:
        return [0] + upto
    device = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available()
                                                                          else "cpu")
    spare = cores - (torch.get_num_threads() if device.type == "cpu" else 1)
    return [k for k in upto if k <= spare] or [0]


def choose_num_workers(dataset, batch_size: int, *, candidates=None, seconds: float = 1.0,
                       step: Optional[Callable] = None, device=None,
                       measure: Optional[Callable[[int], float]] = None) -> int:
    """The worker count whose loader delivers `dataset` fastest, measured: each of `candidates` (default
    worker_candidates(device=device, step=...)) is timed for about seconds / len(candidates) (time_loader),
    `step(batch)` (e.g. training_step(model)) run on each batch in the main process, so that workers compete
    with training for the cores as they will; a single candidate is returned untimed. A step costs
    len(candidates) x MIN_TIMED of its calls at least: seconds on a CPU at 224 px. `measure(k)` -> images/s
    replaces the timing (tests, recorded timings). Ties (within WORKER_TIE) go to fewer workers."""
    if candidates is None:
        candidates = worker_candidates(device=device, step=step is not None)
    candidates = sorted({int(k) for k in candidates})
    if not candidates or candidates[0] < 0:
        raise ValueError(f"candidates must be worker counts >= 0, got {candidates}")
    if len(candidates) == 1:
        return candidates[0]
    if measure is None:
        rates = measure_workers(dataset, batch_size, candidates, seconds=seconds, step=step)
    else:
        rates = {k: float(measure(k)) for k in candidates}
    return pick_workers(rates)


def pick_workers(rates: dict) -> int:
    """The fewest workers within WORKER_TIE of the fastest count's images/s (rates: {workers: images/s})."""
    best = None
    for k in sorted(rates):
        if best is None or rates[k] > rates[best] * (1 + WORKER_TIE):
            best = k
    return int(best)


def measure_workers(dataset, batch_size: int, candidates, *, seconds: float = 1.0,
                    step: Optional[Callable] = None) -> dict:
    """{workers: images/s} of `dataset`'s loader, `step` run on each batch, for each candidate. torch's global
    random state is restored afterwards: the timing does not shift a member's random stream."""
    if len(dataset) == 0:
        raise ValueError("cannot time the loader of an empty dataset")
    rng = torch.get_rng_state()
    try:
        if step is not None:  # its first call allocates and warms up: not timed
            step(default_collate([dataset[i] for i in range(min(batch_size, len(dataset)))]))
        budget = seconds / max(len(candidates), 1)
        return {k: _timed_rate(dataset, batch_size, k, budget, step) for k in candidates}
    finally:
        torch.set_rng_state(rng)


def _timed_rate(dataset, batch_size: int, num_workers: int, seconds: float, step) -> float:
    """time_loader, with a worker count that cannot run here (workers killed: too little shared memory in a
    container, a process limit) timed as 0 images/s, with a warning, instead of failing the plan."""
    try:
        return time_loader(dataset, batch_size, num_workers, seconds, step)
    except RuntimeError as e:
        if num_workers == 0 or isinstance(e, KitError):
            raise
        import warnings
        warnings.warn(f"{num_workers} DataLoader workers failed while timing them ({str(e).splitlines()[0][:200]}); "
                      f"not choosing them", stacklevel=3)
        return 0.0


def time_loader(dataset, batch_size: int, num_workers: int, seconds: float, step: Optional[Callable] = None
                ) -> float:
    """Images/s that make_loader(dataset, ..., num_workers) delivers (with `step` run on each batch) over about
    `seconds`, at least MIN_TIMED batches, once its workers have started and filled their first batches
    (num_workers + 1 batches are not timed). An ImageDataset is repeated to one long epoch first, so that the
    timing sees no epoch end, whose restart a real epoch of many batches pays once."""
    if isinstance(dataset, ImageDataset):
        reps = -(-_TIMED_EPOCH // len(dataset))
        dataset = ImageDataset(dataset.table, np.tile(dataset.indices, reps), dataset.transform)
    loader = make_loader(dataset, batch_size, shuffle=True, num_workers=num_workers, seed=0)
    untimed, timed, images, t0 = num_workers + 1, 0, 0, 0.0
    try:
        while True:
            for batch in loader:
                if untimed:
                    untimed -= 1
                    t0 = time.perf_counter()
                    continue
                if step is not None:
                    step(batch)
                timed, images = timed + 1, images + len(batch[0])
                elapsed = time.perf_counter() - t0
                if timed >= MIN_TIMED and elapsed >= seconds:
                    return images / elapsed
    finally:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()  # persistent workers: stop them now, not when the loader is collected


def training_step(model: torch.nn.Module, channels_last: bool = False, device=None) -> Callable:
    """A training step of `model` on a loader batch, for choose_num_workers(step=...): forward and backward
    (no optimizer update) on a copy in train mode, so the model itself and its BatchNorm statistics are
    unchanged. Labels are not needed (-1 for test rows): the loss is the logits' sum."""
    copy_ = copy.deepcopy(model).train()
    device = torch.device(device) if device is not None else next(copy_.parameters()).device
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    copy_ = copy_.to(device=device, memory_format=fmt)

    def step(batch) -> None:
        x = batch[0].to(device, non_blocking=True).contiguous(memory_format=fmt)
        copy_(x).float().sum().backward()
        copy_.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return step
