"""Cached embeddings against the frozen backbone on the fly: one epoch of a linear head each, same images, same
machine, same run; then the peak memory of extraction (streamed to disk) at two dataset sizes.

    python benchmarks/bench_features.py                         # 512 digits at 64 px, efficientnet_lite0 offline
    python benchmarks/bench_features.py --images 256 --size 96 --memory-sizes 500 2000

The on-the-fly epoch is what feature extraction costs without the cache: every batch decoded, transformed and run
through the frozen backbone (inference mode, the faster memory format), then one step of the head. The cached
epoch is kit.features.train_epoch over the stored [N, D] array. Memory: each size runs in a fresh process (the
peak RSS of a process cannot be reset), on generated images made on access, so that only extraction can grow.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def rss_mb() -> float:
    """Resident memory now (Linux /proc/self/statm: pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakRSS(threading.Thread):
    """The highest resident memory sampled every 2 ms while running (ru_maxrss cannot be reset)."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak, self.done = rss_mb(), threading.Event()

    def run(self):
        while not self.done.wait(0.002):
            self.peak = max(self.peak, rss_mb())

    def stop(self) -> float:
        self.done.set()
        self.join()
        return max(self.peak, rss_mb())


def setup(backbone: str, weights: str, size: int, channels_last: bool | None = None):
    from kit.models.backbone import build_model, model_data_config, pretrained_overlay
    from kit.recipe import AugmentSpec, ModelSpec
    from kit.runtime import use_channels_last
    spec = ModelSpec(backbone=backbone, weights=weights, strategy="feature_extract")
    model, source = build_model(spec, 10, pretrained_overlay(spec, AugmentSpec(input_size=size, crop_pct=0.9)))
    cfg = model_data_config(model)
    channels_last = use_channels_last(channels_last, model, size, torch.device("cpu"))
    model = model.eval().to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return spec, model.requires_grad_(False), cfg, channels_last, source


def epoch_on_the_fly(model, head, loader, optimizer, loss_fn, channels_last: bool) -> float:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    t0 = time.perf_counter()
    head.train()
    for x, y, _ in loader:
        with torch.inference_mode():
            feats = model.forward_head(model.forward_features(x.contiguous(memory_format=fmt)), pre_logits=True)
        loss = loss_fn(head(feats.clone()), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def speed(args) -> None:
    from kit import features as F
    from kit.data import ImageDataset, create_eval_transform, load_sources, make_loader
    from kit.recipe import DataSpec

    spec, model, cfg, channels_last, source = setup(args.backbone, args.weights, args.size)
    table = load_sources(DataSpec(source="digits", digits_size=32, limit=args.images)).train
    print(f"{args.backbone} ({source.split(';')[0]}), {len(table)} digits at {args.size} px, batch {args.batch}, "
          f"{torch.get_num_threads()} threads, channels_last={channels_last}")
    t0 = time.perf_counter()
    emb = F.cached_embeddings(model, table, cfg, backbone=spec.backbone, weights=spec.weights, cut_at=None,
                              batch_size=args.batch, channels_last=channels_last)
    extract_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    hit = F.cached_embeddings(model, table, cfg, backbone=spec.backbone, weights=spec.weights, cut_at=None,
                              batch_size=args.batch, channels_last=channels_last)
    hit_s = time.perf_counter() - t0
    assert emb.computed == ("none",) and hit.computed == ()
    x, y = torch.from_numpy(np.array(emb.views["none"])), torch.from_numpy(table.labels)
    loss_fn = nn.CrossEntropyLoss()

    def fresh_head():
        torch.manual_seed(0)
        head = nn.Linear(x.shape[1], len(table.classes))
        return head, torch.optim.AdamW(head.parameters(), lr=1e-3)

    loader = make_loader(ImageDataset(table, np.arange(len(table)), create_eval_transform(cfg)), args.batch,
                         shuffle=True, num_workers=0, seed=0)
    head, opt = fresh_head()
    epoch_on_the_fly(model, head, loader, opt, loss_fn, channels_last)  # warm-up (allocator, kernels)
    fly = [epoch_on_the_fly(model, head, loader, opt, loss_fn, channels_last) for _ in range(args.repeats)]
    head, opt = fresh_head()
    batches = F.embedding_loader(x, y, args.batch, shuffle=True, seed=0)

    def epoch_on_embeddings():
        for xb, yb, _ in batches:
            loss = loss_fn(head(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    epoch_on_embeddings()  # warm-up
    cached = []
    for _ in range(args.repeats * 10):
        t0 = time.perf_counter()
        epoch_on_embeddings()
        cached.append(time.perf_counter() - t0)
    # The best of several repeats: on a shared machine other processes only ever add time.
    fly_s, cached_s = min(fly), min(cached)
    print(f"extraction once: {extract_s:.2f} s ({len(table) / extract_s:.0f} img/s); cache hit: {hit_s * 1e3:.1f} ms")
    print(f"one epoch, frozen backbone on the fly: {fly_s:.3f} s   (best of {len(fly)}; median {np.median(fly):.3f} s)")
    print(f"one epoch, cached embeddings:          {cached_s * 1e3:.2f} ms (best of {len(cached)}; "
          f"median {np.median(cached) * 1e3:.2f} ms)")
    print(f"ratio: {fly_s / cached_s:.0f}x faster with the cache (medians: {np.median(fly) / np.median(cached):.0f}x)")


class GeneratedDigits(Sequence):
    """n images made on access (deterministic per index): the data set itself takes no memory."""

    def __init__(self, n: int, side: int = 32):
        self.n, self.side = n, side

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        img = np.random.default_rng(i).integers(0, 255, (self.side, self.side, 1), dtype=np.uint8)
        return np.repeat(img, 3, axis=2)


def memory_child(n: int, args) -> None:
    from kit import features as F
    from kit.data.sources import ImageTable
    spec, model, cfg, channels_last, _ = setup(args.backbone, args.weights, args.size, channels_last=False)
    table = ImageTable(np.array([f"g{i}" for i in range(n)]), GeneratedDigits(n), np.zeros(n, np.int64), ("0",))
    with torch.inference_mode():  # a first batch, so that one-off allocations (kernels, allocator pools) are in
        model(torch.zeros(args.batch, 3, args.size, args.size))
    before = rss_mb()
    sampler = PeakRSS()
    sampler.start()
    tracemalloc.start()
    emb = F.cached_embeddings(model, table, cfg, backbone=spec.backbone, weights=spec.weights, cut_at=None,
                              batch_size=args.batch, channels_last=channels_last)
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = sampler.stop()
    print(json.dumps({"n": n, "rss_before_mb": before, "rss_peak_mb": peak, "max_rss_mb": max_rss_mb(),
                      "traced_peak_mb": traced_peak / 2**20, "embeddings_mb": emb.views["none"].nbytes / 2**20,
                      "seconds": emb.seconds}))


def memory(args) -> None:
    print(f"extraction memory ({args.backbone}, {args.size} px, batch {args.batch}; generated images, each size in "
          f"a fresh process and cache):")
    for n in args.memory_sizes:
        with tempfile.TemporaryDirectory() as cache:
            child = [sys.executable, __file__, "--memory-child", str(n), "--backbone", args.backbone,
                     "--weights", args.weights, "--size", str(args.size), "--batch", str(args.batch)]
            out = subprocess.run(child, env={**os.environ, "KIT_CACHE_DIR": cache}, capture_output=True, text=True,
                                 check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        grew = r["rss_peak_mb"] - r["rss_before_mb"]
        print(f"  {r['n']:6d} images: embeddings {r['embeddings_mb']:5.1f} MB on disk; "
              f"RSS {r['rss_before_mb']:4.0f} MB before, peak {r['rss_peak_mb']:4.0f} MB during extraction "
              f"({grew:+.1f} MB; process max {r['max_rss_mb']:.0f} MB); "
              f"tracemalloc peak {r['traced_peak_mb']:.2f} MB; {r['n'] / r['seconds']:.0f} img/s")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--weights", default="auto")
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--memory-sizes", type=int, nargs=2, default=[1000, 4000])
    p.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_child:
        return memory_child(args.memory_child, args)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["KIT_CACHE_DIR"] = cache  # a cold cache, removed afterwards
        speed(args)
    memory(args)


if __name__ == "__main__":
    main()
