"""Which device and precision this machine trains and predicts with."""

from __future__ import annotations

import contextlib
import os
import platform
import re
from functools import cache
from pathlib import Path

import torch


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@cache
def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and feature flags (Linux), empty elsewhere."""
    path = Path("/proc/cpuinfo")
    text = path.read_text() if path.exists() else ""
    model = re.search(r"model name\s*:\s*(.+)", text)
    flags = re.search(r"flags\s*:\s*(.+)", text)
    return (model.group(1).strip() if model else ""), set(flags.group(1).split() if flags else ())


def cpu_name() -> str:
    """The CPU model and its widest vector extension: training speed on a CPU differs most by these."""
    model, flags = _cpuinfo()
    vector = next((f for f in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if f in flags), "no AVX2")
    return f"{model or platform.processor() or platform.machine()} ({vector})"


@cache
def bf16_supported() -> bool:
    """bf16 autocast pays off on CUDA with bf16 and on CPUs with AVX-512-BF16 or AMX."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & _cpuinfo()[1])


def autocast(enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it, otherwise a no-op."""
    if not (enabled and bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device().type, dtype=torch.bfloat16)


def describe() -> dict[str, str | int | bool]:
    """Hardware facts for run parameters."""
    info: dict[str, str | int | bool] = {
        "device": device().type,
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count() or 1,
        "torch_threads": torch.get_num_threads(),
        "bf16": bf16_supported(),
        "torch": torch.__version__,
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
