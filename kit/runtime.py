"""Where and how a run computes: device, mixed precision, memory format, seeds."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available here; use train.device=auto or cpu")
    return device


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None. AMP is a CUDA feature here: on the CPU, bf16 autocast is slower than fp32."""
    if amp == "off" or device.type != "cuda":
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def use_channels_last(setting: bool | None, model: torch.nn.Module) -> bool:
    """channels_last by default for convnets: measured ~3x faster inference for efficientnet_lite0 on this CPU.
    Models without 4-D convolutions (ViTs) gain nothing, so they stay contiguous."""
    if setting is not None:
        return setting
    return any(isinstance(m, torch.nn.Conv2d) for m in model.modules())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return f"cpu:{os.cpu_count()} cores, {torch.get_num_threads()} threads"
