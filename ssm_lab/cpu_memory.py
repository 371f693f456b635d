"""Keep freed memory in the process for CPU training (glibc's allocator).

A training step frees and re-allocates the same large activations every step. glibc serves blocks above its mmap
threshold with fresh mappings and hands the top of the heap back to the system past its trim threshold, so each
step page-faults its activations in again: ~10k faults per step for a 4-layer tv DeepSSM at B=16, L=1024, d=64
and 2 threads, ~8% of its step on this project's CPU machines (median 114 -> 105 ms, faults ~9k -> 1).
Raising both thresholds keeps that memory for the next step; the process keeps its peak resident size instead.
Both, because fixing the trim threshold alone also fixes the mmap threshold at its 128 KiB default (glibc stops
adapting it), which made the same step 2.5x slower. ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the
environment (glibc's own tunables) are left to rule, and ``SSM_LAB_KEEP_FREED_MEMORY=0`` turns this off.
"""

from __future__ import annotations

import ctypes
import os
import platform

__all__ = ["keep_freed_memory"]

# <malloc.h>: mallopt's parameter numbers
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
#: the largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX): 32 MiB
MMAP_THRESHOLD = 32 * 2**20
TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: the largest it can set, 2 GiB


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if they were set. Not applied (False)
    off Linux/glibc, with ``SSM_LAB_KEEP_FREED_MEMORY=0``, or where the environment sets either threshold."""
    if os.environ.get("SSM_LAB_KEEP_FREED_MEMORY", "1") == "0":
        return False
    if any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
