"""Batched TTA (kit.tta) against ttach's sequential wrapper: same model, same images, same views, on the CPU.

ttach runs one forward pass per view (10 passes of `batch` images for ten_crop); kit.tta stacks the views of a
batch and runs them in chunks of at most --max-batch-views rows (16 images x 10 views = 160 rows: one pass).
Both sides feed the model channels_last inputs (the model's weights are channels_last too) and both are warmed
up first. Timings alternate between the methods, round after round, and the best round counts, so that a load
from other processes on a shared machine hits all methods alike.

    python benchmarks/bench_tta.py --model efficientnet_lite0 --images 64 --size 224 --batch 16 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
import ttach
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing kit
from kit import tta
from kit.tta import predict_proba, tta_resize, tta_transforms


class SoftmaxChannelsLast(nn.Module):
    """What ttach wraps: probabilities (as kit.tta merges), inputs made channels_last (as kit.tta feeds them)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.contiguous(memory_format=torch.channels_last)).softmax(dim=-1)


def ttach_sequential(model, loader, mode, size):
    wrapper = ttach.ClassificationTTAWrapper(SoftmaxChannelsLast(model), tta_transforms(mode, size), "mean")
    with torch.inference_mode():
        return torch.cat([wrapper(images) for images, _, _ in loader]).numpy()


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="efficientnet_lite0", help="timm model name (random init)")
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--size", type=int, default=224, help="model input size S; images are R x R, R = S / crop_pct")
    p.add_argument("--batch", type=int, default=16, help="images per loader batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--mode", default="ten_crop")
    p.add_argument("--max-batch-views", type=int, default=256, help="rows per forward pass (recipe default)")
    p.add_argument("--uncapped", type=int, nargs="*", default=[160],
                   help="also time these chunk sizes (rows) with kit's CPU cap (CPU_CHUNK_PIXELS) lifted")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per method; the best counts")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = timm.create_model(args.model, pretrained=False).eval().to(memory_format=torch.channels_last)
    r = tta_resize(args.size, model.pretrained_cfg.get("crop_pct", 0.875), None)
    images = torch.randn(args.images, 3, r, r)
    loader = DataLoader(TensorDataset(images, torch.zeros(args.images), torch.arange(args.images)),
                        batch_size=args.batch)

    def kit_run(mode, rows=args.max_batch_views, cap=tta.CPU_CHUNK_PIXELS):
        def run():
            default, tta.CPU_CHUNK_PIXELS = tta.CPU_CHUNK_PIXELS, cap
            try:
                return predict_proba(model, loader, mode, input_size=args.size, max_batch_views=rows)[0]
            finally:
                tta.CPU_CHUNK_PIXELS = default
        return run

    cap_rows = min(args.max_batch_views, max(1, tta.CPU_CHUNK_PIXELS // args.size ** 2))
    methods = {"ttach sequential": lambda: ttach_sequential(model, loader, args.mode, args.size),
               f"kit batched ({cap_rows} rows a pass)": kit_run(args.mode)}
    for rows in args.uncapped:
        methods[f"kit batched, uncapped ({rows} rows)"] = kit_run(args.mode, rows, cap=10 ** 12)
    methods["kit none (1 view)"] = kit_run("none")

    warm = DataLoader(TensorDataset(images[:args.batch], torch.zeros(args.batch), torch.arange(args.batch)),
                      batch_size=args.batch)
    predict_proba(model, warm, args.mode, input_size=args.size)
    ttach_sequential(model, warm, args.mode, args.size)
    predict_proba(model, warm, "none", input_size=args.size)

    best, outputs = {k: float("inf") for k in methods}, {}
    for _ in range(args.rounds):
        for name, fn in methods.items():
            seconds, outputs[name] = timed(fn)
            best[name] = min(best[name], seconds)

    print(f"{args.model}, {args.images} images {r}x{r} -> {args.mode} views of {args.size}x{args.size}, "
          f"batch {args.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"load average {os.getloadavg()[0]:.1f}, best of {args.rounds} rounds")
    for name, seconds in best.items():
        print(f"  {name:36s} {args.images / seconds:8.1f} images/s  ({seconds:.2f} s)")
    seq, ours = best["ttach sequential"], best[f"kit batched ({cap_rows} rows a pass)"]
    print(f"  batched / sequential speed: {seq / ours:.2f}x")
    print(f"  {args.mode} costs {ours / best['kit none (1 view)']:.1f}x a single view")
    ref = outputs["ttach sequential"]
    diff = max(np.abs(v - ref).max() for k, v in outputs.items() if k.startswith("kit batched"))
    print(f"  max |batched - sequential| probability: {diff:.1e}")


if __name__ == "__main__":
    main()
