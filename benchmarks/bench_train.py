"""Training speed of kit against a minimal hand-written timm + PyTorch loop, measured in the same run.

    OMP_NUM_THREADS=2 python benchmarks/bench_train.py          # ~3 min on a quiet 2-core CPU
    OMP_NUM_THREADS=2 python benchmarks/bench_train.py --mallopt   # glibc's heap tuned, as the kit command does

What it prints: images/s of training (the first epoch of each run left out as warm-up), of the best epoch and
from the median batch time; every configuration runs --rounds times, interleaved (load from other processes
only ever slows an epoch down, and a median batch ignores its bursts):
  reference   the hand-written loop: the decoded images held in memory as one uint8 tensor, each batch
              resized to the input size and flipped as tensor ops, timm model, AdamW, cosine LambdaLR
  (a) kit.train.fit on the same in-memory batches, same model, batch, size, optimizer, schedule and
      channels_last                                                                   target >= 0.97 x reference
  (b) kit end to end from the PNG files: kit's DataLoader reading the decoded cache (kit.data.cache), its
      default albumentations pipeline (RandomResizedCrop + HorizontalFlip), the worker count
      kit.data.choose_num_workers gives as the plan calls it, into kit.train.fit       target >= 0.9 x reference
  baseline    kit as it was: decoding every PNG every epoch, 2 workers (--baseline-workers)
plus the cache's build and reuse times, the worker count choose_num_workers gives (as the plan calls it) and
what it measures when the training step is timed too, each data path alone (an epoch with no model), and
fit's whole wall time (validation and checkpoints included) against the reference's (validation, no
checkpoints).

The data: --images generated PNGs of --side px (10 classes) in a temporary folder, upscaled to --size px
inputs; --val of them (a seeded draw) validate. The cache lives in a temporary $KIT_CACHE_DIR unless one is set.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

MODEL = "efficientnet_lite0"


def make_images(root: Path, n: int, side: int, classes: int = 10) -> None:
    """root/train/c<k>/<i>.png: noise with a class-coloured bar, so the task is learnable."""
    from PIL import Image
    rng = np.random.default_rng(0)
    for i in range(n):
        k = i % classes
        img = rng.integers(0, 120, (side, side, 3), dtype=np.uint8)
        img[:, (k * side) // classes:(k * side) // classes + 3, k % 3] = 250
        (root / "train" / f"c{k}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "train" / f"c{k}" / f"{i:05d}.png")


class MemoryBatches:
    """Batches (x, y, rows) from decoded images held in memory: per batch a resize to `size` (bilinear), a
    random horizontal flip and the normalisation, as tensor ops. The order and flips depend on the epoch."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, cfg: dict, batch: int, train: bool):
        self.images, self.labels, self.batch_size, self.train = images, labels, batch, train
        self.size = cfg["input_size"]
        self.mean = torch.tensor(cfg["mean"]).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"]).view(1, 3, 1, 1) * 255
        self.epoch = 0

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.epoch)
        self.epoch += 1
        n = len(self.images)
        order = torch.randperm(n, generator=g) if self.train else torch.arange(n)
        for i in range(0, n, self.batch_size):
            rows = order[i:i + self.batch_size]
            x = F.interpolate(self.images[rows].float(), size=(self.size, self.size), mode="bilinear",
                              align_corners=False)
            if self.train:
                flip = torch.rand(len(rows), generator=g) < 0.5
                x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
            yield (x - self.mean) / self.std, self.labels[rows], rows


def new_model(classes: int):
    import timm
    torch.manual_seed(0)
    return timm.create_model(MODEL, pretrained=False, num_classes=classes).to(memory_format=torch.channels_last)


def cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return 1e-3 + step * (1 - 1e-3) / warmup
    return 1e-3 + 0.5 * (1 - 1e-3) * (1 + math.cos(math.pi * min(step, total) / total))


def reference(train, val, classes: int, epochs: int, lr: float, wd: float) -> list[dict]:
    """The hand-written loop: timm model and optimizer factory, AdamW, cosine with one warm-up epoch."""
    from timm.optim import create_optimizer_v2
    model = new_model(classes)
    opt = create_optimizer_v2(model, opt="adamw", lr=lr, weight_decay=wd)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine(s, epochs * len(train), len(train)))
    loss_fn = torch.nn.CrossEntropyLoss()
    rows = []
    for epoch in range(epochs):
        model.train()
        train.set_epoch(epoch)
        t0, seen, total = time.perf_counter(), 0, 0.0
        ends = []
        for x, y, _ in train:
            x = x.contiguous(memory_format=torch.channels_last)
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(x)
            seen += len(x)
            ends.append(time.perf_counter())
        ips = seen / (time.perf_counter() - t0)
        model.eval()
        with torch.inference_mode():
            correct = sum(int((model(x.contiguous(memory_format=torch.channels_last)).softmax(1).argmax(1) == y)
                              .sum()) for x, y, _ in val)
        rows.append({"train_images_per_s": ips, "seconds": time.perf_counter() - t0, "acc": correct / val_n(val),
                     "batch_seconds": np.diff([t0] + ends).tolist()})
    return rows


def val_n(val) -> int:
    return len(val.images) if isinstance(val, MemoryBatches) else len(val.dataset)


def kit_fit(train, val, val_labels, classes: int, epochs: int, lr: float, wd: float, out: Path) -> list[dict]:
    from kit.recipe import ModelSpec, TrainSpec
    from kit.train import fit
    model = new_model(classes)
    spec = TrainSpec(epochs=epochs, batch_size=train.batch_size,
                     lr=lr, weight_decay=wd, amp="off", device="cpu")
    ends: dict = {}

    def progress_factory(epoch):  # called after each batch: the times between calls are batch times
        ends[epoch] = [time.perf_counter()]
        return lambda *_: ends[epoch].append(time.perf_counter())
    history = fit(model, train, val, val_labels, ModelSpec(strategy="full", channels_last=True), spec, out,
                  num_classes=classes, device=torch.device("cpu"), channels_last=True,
                  progress_factory=progress_factory)
    return [{**row, "batch_seconds": np.diff(ends[e]).tolist()} for e, row in enumerate(history.epochs)]


def timed(fn, *args) -> tuple[list[dict], float]:
    t0 = time.perf_counter()
    rows = fn(*args)
    return rows, time.perf_counter() - t0


def summary(runs: list[tuple[list[dict], float]], batch: int) -> dict:
    """Training images/s: of the best epoch and from the median batch time, over the epochs after the first of
    every run (the median batch shrugs off bursts of load from other processes; the best epoch includes every
    per-epoch cost); mean wall of a run and its part outside the epochs (training + validation)."""
    epochs = [r for rows, _ in runs for r in (rows[1:] or rows)]
    ips = [r["train_images_per_s"] for r in epochs]
    return {"best": max(ips), "median": batch / statistics.median(t for r in epochs for t in r["batch_seconds"]),
            "wall": statistics.mean(w for _, w in runs),
            # model creation, setup and (fit) the checkpoints written after each epoch
            "outside": statistics.mean(w - sum(r["seconds"] for r in rows) for rows, w in runs)}


def prepare(a, root: Path) -> dict:
    """The PNG folder, its sources (scanned, then with the decoded cache attached: both timed), the in-memory
    batches and kit's datasets."""
    from kit.data import ImageDataset, create_eval_transform, create_train_transform, load_sources
    from kit.models.backbone import build_model, model_data_config, pretrained_overlay
    from kit.data.cache import attach_decoded_cache
    from kit.data.scan import scan_sources
    from kit.recipe import AugmentSpec, DataSpec, ModelSpec
    make_images(root, a.images, a.side)
    sources = load_sources(DataSpec(source="imagefolder", root=str(root), test_dir=None))
    assert not scan_sources(sources, progress=False)
    t0 = time.perf_counter()
    attach_decoded_cache(sources, progress=False)
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    table = attach_decoded_cache(sources, progress=False).train
    reuse = time.perf_counter() - t0
    augment = AugmentSpec(input_size=a.size)
    spec = ModelSpec(backbone=MODEL, weights="none")
    cfg = model_data_config(build_model(spec, None, pretrained_overlay(spec, augment), load_weights=False)[0])
    perm = np.random.default_rng(0).permutation(len(table))  # imagefolder rows are sorted by class
    val_rows, train_rows = np.sort(perm[:a.val]), np.sort(perm[a.val:])
    images = torch.from_numpy(np.stack([table.image(r) for r in range(len(table))])).permute(0, 3, 1, 2)
    labels = torch.from_numpy(table.labels)
    return {
        "build": build, "reuse": reuse, "classes": len(table.classes), "n_train": len(train_rows),
        "mem_train": MemoryBatches(images[train_rows], labels[train_rows], cfg, a.batch, train=True),
        "mem_val": MemoryBatches(images[val_rows], labels[val_rows], cfg, 2 * a.batch, train=False),
        "mem_val_labels": labels[val_rows].numpy(), "labels": table.labels,
        "train_ds": ImageDataset(table, train_rows, create_train_transform(augment, cfg)),
        "val_ds": ImageDataset(table, val_rows, create_eval_transform(cfg)),
        "uncached_ds": ImageDataset(sources.train, train_rows, create_train_transform(augment, cfg)),
        "uncached_val": ImageDataset(sources.train, val_rows, create_eval_transform(cfg)),
        "store_bytes": int(sum(table.image(r).nbytes for r in range(len(table)))),
    }


def step_timed_workers(d: dict, a) -> tuple[dict, float]:
    """What choose_num_workers measures with the model's training step timed on every count (0, 1, 2, ...
    cores): ({workers: img/s}, seconds taken). Shown beside the plan's choice, which times no step."""
    from kit.data.loader import measure_workers, training_step, worker_candidates
    t0 = time.perf_counter()
    rates = measure_workers(d["train_ds"], a.batch, worker_candidates(step=True), seconds=a.choose_seconds,
                            step=training_step(new_model(d["classes"]), channels_last=True))
    return rates, time.perf_counter() - t0


def data_seconds(loader, epochs: int = 3) -> float:
    """Seconds of the fastest of `epochs` passes over a loader with no model: the data path's own cost."""
    best = float("inf")
    for _ in range(epochs):
        t0 = time.perf_counter()
        for _batch in loader:
            pass
        best = min(best, time.perf_counter() - t0)
    return best


def data_only(a, d: dict, workers: int) -> dict:
    from kit.data import make_loader
    loaders = {"reference": d["mem_train"],
               "b": make_loader(d["train_ds"], a.batch, shuffle=True, num_workers=workers, seed=0),
               "baseline": make_loader(d["uncached_ds"], a.batch, shuffle=True, num_workers=max(a.baseline_workers, 0),
                                       seed=0)}
    return {k: data_seconds(v) for k, v in loaders.items()}


def run_all(a, d: dict, workers: int, out: Path) -> dict:
    from kit.data import make_loader
    args = (d["classes"], a.epochs, a.lr, a.weight_decay)
    results = {"reference": [], "a": [], "b": [], "baseline": []}
    for r in range(a.rounds):
        results["reference"].append(timed(reference, d["mem_train"], d["mem_val"], *args))
        results["a"].append(timed(kit_fit, d["mem_train"], d["mem_val"], d["mem_val_labels"], *args, out / f"a{r}"))
        train = make_loader(d["train_ds"], a.batch, shuffle=True, num_workers=workers, seed=0)
        val = make_loader(d["val_ds"], 2 * a.batch, shuffle=False, num_workers=workers, seed=0)
        results["b"].append(timed(kit_fit, train, val, d["labels"], *args, out / f"b{r}"))
        del train, val  # stop their workers before the next configuration is timed
    if a.baseline_workers >= 0:
        train = make_loader(d["uncached_ds"], a.batch, shuffle=True, num_workers=a.baseline_workers, seed=0)
        val = make_loader(d["uncached_val"], 2 * a.batch, shuffle=False, num_workers=a.baseline_workers, seed=0)
        results["baseline"].append(timed(kit_fit, train, val, d["labels"], *args, out / "baseline"))
    return {k: summary(v, a.batch) for k, v in results.items() if v}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=2048)
    p.add_argument("--side", type=int, default=28, help="stored side of the generated PNGs (px)")
    p.add_argument("--size", type=int, default=64, help="model input size (px)")
    p.add_argument("--val", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--choose-seconds", type=float, default=1.0, help="choose_num_workers' timing budget")
    p.add_argument("--baseline-workers", type=int, default=2, help="-1: skip the uncached baseline")
    p.add_argument("--mallopt", action="store_true",
                   help="tune glibc's allocator first (kit.runtime.tune_allocator, as the kit command does)")
    a = p.parse_args()
    from kit.runtime import tune_allocator
    malloc = ("glibc malloc tuned" if tune_allocator() else "mallopt unavailable") if a.mallopt else \
        "default malloc"
    with tempfile.TemporaryDirectory(prefix="kit-bench-train-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("KIT_CACHE_DIR", str(tmp / "cache"))
        load0 = os.getloadavg()
        d = prepare(a, tmp / "images")
        from kit.data import choose_num_workers
        t0 = time.perf_counter()
        workers = choose_num_workers(d["train_ds"], a.batch, seconds=a.choose_seconds)  # as the plan calls it
        choose_s = time.perf_counter() - t0
        print(f"{MODEL} at {a.size} px from {a.images} generated {a.side} px PNGs ({d['n_train']} train, {a.val} "
              f"val), batch {a.batch}, {a.epochs} epochs x {a.rounds} rounds, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} cores, torch {torch.__version__}, {malloc}")
        print(f"load average before: {' '.join(f'{x:.2f}' for x in load0)}")
        print(f"decoded cache: built in {d['build']:.2f} s ({d['store_bytes'] / 1e6:.1f} MB), reused in "
              f"{d['reuse']:.3f} s; choose_num_workers (no step, as the plan calls it): {workers} ({choose_s:.2f} s)")
        data = data_only(a, d, workers)
        print("data path alone, one epoch (no model, best of 3): " + ", ".join(
            f"{k} {v:.2f} s" for k, v in data.items()))
        s = run_all(a, d, workers, tmp / "runs")
        ref = s["reference"]
        names = {"reference": "reference: hand loop, memory", "a": "(a) kit.train.fit, memory",
                 "b": f"(b) kit end to end, files via cache, {workers} workers",
                 "baseline": f"baseline: kit, PNGs decoded each epoch, {a.baseline_workers} workers"}
        targets = {"a": 0.97, "b": 0.9}
        print(f"{'images/s of training:':56s} {'epoch':>8s} {'batch':>8s} {'ratio':>7s} {'ratio':>7s} "
              f"{'wall/run':>9s} {'outside epochs':>14s}")
        print(f"{'(best epoch; from the median batch time)':56s} {'best':>8s} {'median':>8s} {'epoch':>7s} "
              f"{'batch':>7s}")
        for k, v in s.items():
            ratio = f"{v['best'] / ref['best']:6.3f}x {v['median'] / ref['median']:6.3f}x"
            target = f"  target >= {targets[k]}x" if k in targets else ""
            print(f"{names[k]:56s} {v['best']:8.1f} {v['median']:8.1f} {ratio} {v['wall']:8.1f}s "
                  f"{v['outside']:13.2f}s{target}")
        rates, seconds = step_timed_workers(d, a)
        print("choose_num_workers' timing with the training step: " + ", ".join(
            f"{k} workers {v:.0f} img/s" for k, v in rates.items()) + f" ({seconds:.1f} s)")
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
