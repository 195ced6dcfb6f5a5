"""Training throughput of a timm backbone on this machine: images/s with and without channels_last,
measured in the same run (forward + backward + AdamW step, random data, train mode).

    python benchmarks/bench_train.py --model efficientnet_lite0 --size 224 --batch 32 --steps 6
"""
from __future__ import annotations

import argparse
import time

import timm
import torch


def images_per_s(model, x, y, steps: int, warmup: int = 2) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
    return steps * len(x) / (time.perf_counter() - t0)


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--size", type=int, nargs="+", default=[224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    print(f"{a.model}, batch {a.batch}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    for size in a.size:
        torch.manual_seed(0)
        x = torch.randn(a.batch, 3, size, size)
        y = torch.randint(0, 10, (a.batch,))
        model = timm.create_model(a.model, pretrained=False, num_classes=10)
        ref = images_per_s(model, x, y, a.steps)
        model = model.to(memory_format=torch.channels_last)
        cl = images_per_s(model, x.contiguous(memory_format=torch.channels_last), y, a.steps)
        print(f"{size:4d} px  contiguous {ref:7.1f} img/s   channels_last {cl:7.1f} img/s   ratio {cl / ref:.2f}x")


if __name__ == "__main__":
    main()
