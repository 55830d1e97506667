"""Which device and precision this machine trains and predicts with."""

from __future__ import annotations

import contextlib
import os
import platform
from functools import cache
from pathlib import Path

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@cache
def bf16_supported() -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with AVX-512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    cpuinfo = Path("/proc/cpuinfo")
    flags = cpuinfo.read_text() if cpuinfo.exists() else ""
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it, otherwise a no-op."""
    if not (enabled and bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device().type, dtype=torch.bfloat16)


def describe() -> dict[str, str | int | bool]:
    """Hardware facts for run parameters."""
    info: dict[str, str | int | bool] = {
        "device": device().type,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "bf16": bf16_supported(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
