"""Depthwise weight gradients tap by tap (kit.models.depthwise) against oneDNN's, in one run.

    python benchmarks/bench_depthwise.py                                  # efficientnet_lite0, 48 64 96 128 224 px
    python benchmarks/bench_depthwise.py --backbone mobilenetv3_large_100 --sizes 64 128 --batch 64

Times training steps (forward, backward, AdamW step) of the same model and batch with oneDNN's gradients and with
the taps, the two interleaved step by step (a load from another process slows both alike), both in channels_last
(the format the plan chooses for these models on this CPU); prints the median images/s of each, their ratio, and how many depthwise convolutions meet a kernel wider than their input at that size (the only ones
the taps change). Then the weight gradient of each such layer alone (oneDNN against the taps, ms). The decision it
informs: the plan's timing (kit.runtime.use_depthwise_taps) takes the taps where they are faster.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kit.models.depthwise import depthwise_inputs, tap_candidates, tap_weight_grad, use_tap_gradients  # noqa: E402,E501


def step_rates(models: dict, size: int, batch: int, steps: int) -> dict:
    """{name: median images/s} of training steps, the models' steps interleaved."""
    x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    opts = {name: torch.optim.AdamW(m.parameters(), lr=1e-4) for name, m in models.items()}
    times = {name: [] for name in models}
    for i in range(steps + 2):  # 2 warm-up steps each
        for name, m in models.items():
            t0 = time.perf_counter()
            F.cross_entropy(m(x), y).backward()
            opts[name].step()
            opts[name].zero_grad(set_to_none=True)
            if i >= 2:
                times[name].append(time.perf_counter() - t0)
    return {name: batch / statistics.median(t) for name, t in times.items()}


def layer_table(model, size: int, batch: int, repeats: int = 9) -> list[str]:
    """The weight gradient of each depthwise convolution whose kernel is wider than its input, timed alone."""
    lines, seen = [], set()
    for conv, shape in depthwise_inputs(model, size):  # the model's modes are kept: step_rates trains it next
        (c, h, w), k, s, p = shape[1:], conv.kernel_size, conv.stride, conv.padding
        if not (k[0] > h or k[1] > w) or (c, h, w, k, s) in seen:
            continue
        seen.add((c, h, w, k, s))
        x = torch.randn(batch, c, h, w).contiguous(memory_format=torch.channels_last)
        weight = conv.weight.detach()
        g = torch.randn_like(F.conv2d(x, weight, None, s, p, 1, c))

        def onednn():
            torch.ops.aten.convolution_backward(g, x, weight, None, list(s), list(p), [1, 1], False, [0, 0], c,
                                                [False, True, False])

        def taps():
            tap_weight_grad(x, g, k, s, p)
        ms = {}
        for name, fn in (("onednn", onednn), ("taps", taps)):
            fn()
            t = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                t.append(time.perf_counter() - t0)
            ms[name] = 1e3 * statistics.median(t)
        lines.append(f"    {c:5d} ch, {h}x{w} map, {k[0]}x{k[1]} kernel, stride {s[0]}: oneDNN {ms['onednn']:6.2f} ms, "
                     f"taps {ms['taps']:6.2f} ms ({ms['onednn'] / ms['taps']:.1f}x)")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--sizes", type=int, nargs="+", default=[48, 64, 96, 128, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    args = p.parse_args()
    import timm
    torch.manual_seed(0)
    base = timm.create_model(args.backbone, num_classes=10).to(memory_format=torch.channels_last).train()
    taps = copy.deepcopy(base)
    converted = use_tap_gradients(taps)
    print(f"{args.backbone}: {converted} depthwise convolutions converted; batch {args.batch}, channels_last, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} "
          f"(oneDNN and taps interleaved step by step, median of {args.steps} steps each)")
    for size in args.sizes:
        n = tap_candidates(taps, size)
        if not n:
            print(f"{size:4d} px: no kernel wider than its input: the taps change nothing")
            continue
        rates = step_rates({"onednn": base, "taps": taps}, size, args.batch, args.steps)
        print(f"{size:4d} px: {n} convolutions take the taps; training oneDNN {rates['onednn']:6.1f} images/s, taps "
              f"{rates['taps']:6.1f} images/s: {rates['taps'] / rates['onednn']:.2f}x")
        print("\n".join(layer_table(base, size, args.batch)))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
