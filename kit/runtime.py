"""Where and how a run computes: device, mixed precision, memory format, seeds."""
from __future__ import annotations

import copy
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from kit.rundir import write_json_atomic
from kit.errors import RecipeError


def tune_allocator() -> bool:
    """Keep freed blocks up to 32 MiB in glibc's heap, and trim the heap only above 1 GiB free (mallopt
    M_MMAP_THRESHOLD, M_TRIM_THRESHOLD), before anything big is allocated; False where the C library is not glibc
    or KIT_MALLOPT=0. The `kit` command calls it first. Why: with glibc's dynamic thresholds, each training step's
    activations were mapped, faulted in and unmapped again after the validation and checkpoint of an epoch had moved
    the thresholds: kit.train.fit trained at 0.93-0.95x of the same loop written by hand, 0.955-0.96x with this
    (benchmarks/bench_train.py --mallopt); either setting alone was slower still."""
    if os.environ.get("KIT_MALLOPT", "1") == "0":
        return False
    import ctypes
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    return bool(mallopt(-3, 32 << 20)) and bool(mallopt(-1, 1 << 30))  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return device


# torch's out-of-memory error (CUDA, MPS, XPU); on the CPU memory runs out as a plain RuntimeError or the OOM killer
OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def free_memory(device: torch.device) -> None:
    """Give back what the caching allocator holds after an out-of-memory error, before a smaller retry."""
    import gc
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def halve_after_oom(rows: int, device: torch.device, what: str, log=None, then: str = "") -> int:
    """The rows of a forward pass after one of `rows` ran out of memory on `device` (half, rounded up), said through
    `log` (default: a RuntimeWarning); OutOfMemory when a single row did not fit."""
    import warnings
    from kit.errors import OutOfMemory
    if rows <= 1:
        raise OutOfMemory(f"out of memory on {device} {what} a single image: the model does not fit; use a smaller "
                          f"backbone or augment.input_size, or train.amp: bf16")
    free_memory(device)
    new = (rows + 1) // 2
    (log or (lambda m: warnings.warn(m, RuntimeWarning, stacklevel=3)))(
        f"out of memory on {device} {what} {rows} images a pass: {new} a pass from now on{then}")
    return new


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None. AMP is a CUDA feature here: on the CPU, bf16 autocast is slower than fp32."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


TIMED_BATCH = 16  # images a timed step of use_channels_last: closer to a training batch than 4, still quick


def use_channels_last(setting: bool | None, model: torch.nn.Module, input_size: int | None = None,
                      device: torch.device | None = None) -> bool:
    """The recipe's model.channels_last, or (None) the faster memory format, measured, not guessed.

    On this 2-core CPU, efficientnet_lite0 trains 3.1x faster in channels_last at 224 px but slower at some
    small sizes, so the choice is timed once per (model, input size, threads, torch) and cached in
    $KIT_CACHE_DIR/channels_last.json. On CUDA channels_last is taken (tensor cores want NHWC under AMP);
    models without 2-D convolutions (ViTs) stay contiguous."""
    if setting is not None:
        return setting
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return False
    device = device or next(model.parameters()).device
    if device.type == "cuda" or input_size is None:
        return True
    key = f"{_model_key(model, input_size)}:b{TIMED_BATCH}:{torch.get_num_threads()}t:{torch.__version__}"
    times = _cached_times("channels_last.json", key, lambda: _time_steps(
        model, input_size, device, {"contiguous": (torch.contiguous_format, None),
                                    "channels_last": (torch.channels_last, None)}))
    return times["channels_last"] < times["contiguous"]


def use_depthwise_taps(setting: bool | None, model: torch.nn.Module, input_size: int | None, device: torch.device,
                       channels_last: bool) -> bool:
    """The recipe's model.depthwise_taps, or (None) whether `model` trains faster at `input_size` px with the weight
    gradients of its depthwise convolutions taken tap by tap where their kernel is wider than their input
    (kit.models.depthwise), timed once per (model, size, format, threads, torch) in
    $KIT_CACHE_DIR/depthwise_taps.json. False off the CPU, whatever the setting; timed only when some convolution
    meets such an input."""
    from kit.models.depthwise import tap_candidates, use_tap_gradients
    if device.type != "cpu":  # elsewhere TapDepthwiseConv2d is nn.Conv2d: nothing to choose
        return False
    if setting is not None:
        return setting
    if input_size is None or not tap_candidates(model, input_size):
        return False
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    key = (f"{_model_key(model, input_size)}:{'channels_last' if channels_last else 'contiguous'}:b{TIMED_BATCH}:"
           f"{torch.get_num_threads()}t:{torch.__version__}")
    times = _cached_times("depthwise_taps.json", key, lambda: _time_steps(
        model, input_size, device, {"onednn": (fmt, None), "taps": (fmt, use_tap_gradients)}))
    return times["taps"] < times["onednn"]


def _model_key(model: torch.nn.Module, input_size: int) -> str:
    return f"{type(model).__name__}:{sum(p.numel() for p in model.parameters())}:{input_size}px"


def _cached_times(name: str, key: str, measure) -> dict:
    """{variant: seconds a step} for `key` from $KIT_CACHE_DIR/<name>, measured (and kept) the first time."""
    from kit.readers import read_json
    cache = cache_dir() / name
    known = read_json(cache, fix="remove it (kit times again)", schema={"*": dict}) if cache.exists() else {}
    if key not in known:
        known[key] = measure()
        write_json_atomic(cache, known)
    return known[key]


def _time_steps(model: torch.nn.Module, size: int, device, variants: dict, batch: int = TIMED_BATCH,
                rounds: int = 3) -> dict:
    """Seconds per training step (forward + backward) of each variant {name: (memory format, prepare)}, prepare
    (None, or a function changing a copy of the model in place) applied to a copy of its own; the best of `rounds`,
    the variants interleaved (a, b, a, b, ...) after a warm-up step of each, so that a load from another process
    slows all alike. Batch 4 and two steps a format, as this was before, flipped the memory format's choice on a
    loaded machine and cost the quickstart 40 % of its speed (channels_last: 230 images/s, contiguous: 140)."""
    models = {}
    for name, (fmt, prepare) in variants.items():
        m = copy.deepcopy(model).train()  # train-mode forwards would move the real model's BatchNorm statistics
        if prepare is not None:
            prepare(m)
        models[name] = (m.to(memory_format=fmt), fmt)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    times = {name: float("inf") for name in variants}
    with torch.random.fork_rng(devices=[]):  # dropout in the timed forwards must not shift the member's stream
        for i in range(rounds + 1):
            for name, (m, fmt) in models.items():
                xf = x.contiguous(memory_format=fmt)
                t0 = time.perf_counter()
                m(xf).float().sum().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if i:  # round 0 warms each up
                    times[name] = min(times[name], time.perf_counter() - t0)
    return times


def cache_dir() -> Path:
    """$KIT_CACHE_DIR or ~/.cache/kit: kit's caches (embeddings/, advice/, channels_last.json)."""
    return Path(os.environ.get("KIT_CACHE_DIR") or Path.home() / ".cache" / "kit")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()} cores, {torch.get_num_threads()} threads"
