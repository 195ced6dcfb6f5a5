"""One member over many processes: `torchrun --nproc-per-node N -m kit train RECIPE --member I`.

torchrun starts N copies of kit with RANK, LOCAL_RANK and WORLD_SIZE in their environment; `start()` joins them
into one process group: NCCL on GPUs (rank r on cuda:LOCAL_RANK), gloo on CPUs. Then every rank opens the run
(rank 0 first: it writes plan.json and folds.csv, the others reload them, so all train the one planned member),
builds the member's model from the same seed and trains it under DistributedDataParallel on its share of each
batch: the sampler gives rank r the positions r, r + N, r + 2N ... of the epoch's order (kit.data.loader), in
batches of batch_size / N, so that batch k of the N ranks together is batch k of a one-process run, each image
with the same augmentation seed; DDP averages the gradients. Validation probabilities are gathered onto every rank,
so all ranks take the same best-epoch and early-stopping decisions. Only rank 0 writes (checkpoints, history,
predictions, done.json, the leaderboard) and logs; a resumed run reads last.pt on every rank. Out of memory stops
the run with the fix (kit.train): one rank halving its batch alone would pair its gradient reductions wrongly.

Outside torchrun (WORLD_SIZE unset or 1) nothing here does anything: `current()` is None.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist

from kit.errors import RecipeError

# how long a rank waits for the others at a collective: rank 0 alone predicts the member's test images with every
# TTA mode while the others wait (torch's default, 10 minutes for NCCL, is shorter than that can take)
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class World:
    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether torchrun (or any launcher setting WORLD_SIZE > 1) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device: str = "auto") -> World | None:
    """Join the launcher's process group (once); None when this process runs alone."""
    if not launched():
        return None
    if not dist.is_initialized():
        cuda = device != "cpu" and torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=TIMEOUT)
    return current()


def stop() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def current() -> World | None:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return None
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def is_main() -> bool:
    world = current()
    return world is None or world.main


def device(name: str) -> torch.device:
    """The device of this rank: its own GPU (cuda:LOCAL_RANK) under CUDA, else the CPU."""
    from kit.runtime import resolve_device
    d = resolve_device(name)
    world = current()
    if world is not None and d.type == "cuda":
        return torch.device("cuda", world.local_rank)
    return d


def barrier() -> None:
    if current() is not None:
        dist.barrier()


def broadcast(value):
    """Rank 0's `value` on every rank (any picklable object: a decision, a small record)."""
    if current() is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean(value: float) -> float:
    """The mean over ranks of a number (each rank's share of the batch is the same size)."""
    return _reduce(value) / current().size if current() is not None else value


def total(value: float) -> float:
    return _reduce(value) if current() is not None else value


def _reduce(value: float) -> float:
    t = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        t = t.cuda()
    dist.all_reduce(t)
    return float(t.item())


def gather_rows(probs: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's (probabilities, table rows) on every rank, in rank order, each row once (the sampler pads
    the last ranks' shares with repeated rows)."""
    if current() is None:
        return probs, rows
    parts = [None] * current().size
    dist.all_gather_object(parts, (probs, rows))
    p = np.concatenate([x[0] for x in parts])
    r = np.concatenate([x[1] for x in parts])
    _, first = np.unique(r, return_index=True)
    keep = np.sort(first)
    return p[keep], r[keep]


def shard_batch(batch_size: int) -> int:
    """Each rank's share of train.batch_size; RecipeError when it does not divide evenly."""
    world = current()
    if world is None:
        return batch_size
    if batch_size % world.size:
        raise RecipeError(f"train.batch_size {batch_size} does not divide among the {world.size} processes torchrun "
                          f"started; set train.batch_size to a multiple of {world.size} (it is the batch of all "
                          f"processes together)")
    return batch_size // world.size


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The model under DistributedDataParallel (its parameters now requiring a gradient), or itself alone."""
    if current() is None:
        return model
    from torch.nn.parallel import DistributedDataParallel
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
