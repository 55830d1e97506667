"""Which device and precision this machine trains and predicts with."""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import re
import time
from collections.abc import Callable
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


# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


@cache
def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse instead of handing it back to the kernel. A training step
    frees and allocates the same large activations every step; by default each is a fresh mmap whose pages the
    kernel zero-fills again (make bench, allocator rows). Costs some resident memory. False where the C library
    is not glibc (nothing changed)."""
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    largest = ctypes.c_int(2**31 - 1)  # mallopt takes an int: allocations up to 2 GiB come from the heap
    return bool(mallopt(_M_MMAP_THRESHOLD, largest) and mallopt(_M_TRIM_THRESHOLD, largest))


def autocast(enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware has it, otherwise a no-op."""
    if not (enabled and bf16_supported()):
        return contextlib.nullcontext()
    return torch.autocast(device().type, dtype=torch.bfloat16)


def synchronize() -> None:
    """Wait for the device's queued work, so that wall-clock timings hold it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def matmul_flops(dtype: torch.dtype, size: int | None = None, repeats: int = 10) -> float:
    """The best measured matrix-multiply rate (FLOP/s) of the training device for a dtype: what model FLOP
    utilisation is measured against (2048-wide matrices on a CPU, 8192 on a GPU, which small ones leave idle)."""
    size = size or (8192 if torch.cuda.is_available() else 2048)
    a, b = (torch.randn(size, size, dtype=dtype, device=device()) for _ in range(2))
    torch.matmul(a, b)
    synchronize()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.matmul(a, b)
        synchronize()
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def counted_flops(work: Callable[[], object]) -> float:
    """The floating-point operations of one call of `work` (e.g. a training step's forward and backward), as
    PyTorch's FLOP counter counts them: matrix products and convolutions."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        work()
    return float(counter.get_total_flops())


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
