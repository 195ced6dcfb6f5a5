"""train.compile: torch.compile against eager PyTorch, the same model, batch and optimizer, in one run.

    python benchmarks/bench_compile.py                       # efficientnet_lite0 at 64 px, batch 64, CPU
    python benchmarks/bench_compile.py --size 224 --batch 32 --device cuda

Times training steps (forward, backward, AdamW step, channels_last) and inference passes of each, after warm-up
steps (the compiled model's first steps compile it: that time is printed apart), and prints images/s and the
ratio compiled / eager. The decision it informs: `train.compile` stays off by default unless it is faster here.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def build(backbone: str, classes: int, device):
    import timm
    from kit.models.pretrained import load_pretrained
    model = timm.create_model(backbone, num_classes=classes)
    if backbone.startswith("efficientnet_lite"):
        load_pretrained(model, backbone, "offline")
    return model.to(device, memory_format=torch.channels_last)


def measure(model, x, y, steps: int, warmup: int, train: bool) -> tuple[float, float]:
    """(seconds of the warm-up steps, images/s over the timed steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step():
        if train:
            model.train()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            model.eval()
            with torch.inference_mode():
                model(x)
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    t1 = time.perf_counter()
    for _ in range(steps):
        step()
    return t1 - t0, steps * len(x) / (time.perf_counter() - t1)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device).contiguous(
        memory_format=torch.channels_last)
    y = torch.randint(0, 10, (args.batch,), generator=g).to(device)
    print(f"{args.backbone} at {args.size} px, batch {args.batch}, {device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} (eager and compiled, one after the other)")
    for train in (True, False):
        what = "training" if train else "inference"
        torch.manual_seed(0)
        eager = build(args.backbone, 10, device)
        _, ips_eager = measure(eager, x, y, args.steps, args.warmup, train)
        torch.manual_seed(0)
        compiled = torch.compile(build(args.backbone, 10, device))
        warm_s, ips_compiled = measure(compiled, x, y, args.steps, args.warmup, train)
        print(f"  {what:9s}  eager {ips_eager:7.1f} img/s   compiled {ips_compiled:7.1f} img/s   "
              f"compiled / eager {ips_compiled / ips_eager:.2f}x   (compiling + {args.warmup} warm-up steps: "
              f"{warm_s:.0f} s)")


if __name__ == "__main__":
    main()
