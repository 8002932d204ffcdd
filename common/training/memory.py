"""Process-level malloc tuning that keeps DP-SGD's per-sample-gradient buffers mapped."""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4   # glibc mallopt parameter numbers (malloc.h)
_malloc_tuned = False


def retain_freed_memory() -> bool:
    """Make glibc's malloc reuse freed heap memory instead of unmapping it; True when applied.

    DP-SGD materialises per-sample gradients: for ResNet-18 (width 16, batch 64) tens of MB
    per layer and step. glibc serves blocks above 32 MB with fresh ``mmap`` pages and unmaps
    them on ``free``, so every step pays a page fault per 4 kB again; in our VM a batched matmul
    writing a fresh 38 MB block took 5x as long as one writing reused memory, and the DP step was
    3.3x the non-DP step instead of 2.6x (ResNet-18, 28x28; bench/dp_overhead.py). This turns off
    mmap'd chunks and keeps up to 1 GiB of free heap for reuse. It is process-wide and stays on (the process keeps
    its peak heap); a no-op outside glibc. Called by `common.training.dp_local.train_local_dp`.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**30) == 1
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok
