"""glibc's malloc told to keep freed memory for the next step: a speed option for the CPU.

Every train step allocates its activations and gradients afresh and frees them again. glibc's malloc serves a
block over its mmap threshold (which it raises with the blocks freed, up to 32 MiB) with pages fresh from the
kernel, and hands them back on free, so the next step page-faults them in again and the kernel zeroes each one.
The book's AlexNet step at batch 128 makes blocks of up to 143 MB, every step. With mmap off and no trimming,
freed blocks stay in the heap and the next step reuses them: on a 2-core AMD EPYC (fp32), AlexNet's book step
(330,000 page faults a step before) went from 5.2-5.3 to 4.5 s; the 96- and 224-pixel book experiments train
1.04-1.4x faster with it on a CPU with bf16 in hardware, the 28-pixel LeNets 0.99-1.08x (docs/benchmarks.md).

The cost: the process keeps the memory it used at its peak until it exits. The setting is process-wide and
glibc cannot undo it, so the library never sets it: ``moderncnn train``, which owns its process, does on a CPU
(the speed policy's choice: :func:`moderncnn.train.speed.keeps_freed_memory`).
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["glibc_malloc", "keep_freed_memory", "keeping_freed_memory"]

# mallopt's parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4

_kept = False


def glibc_malloc() -> bool:
    """Whether this process's C library is glibc (on Linux), whose malloc :func:`keep_freed_memory` sets."""
    return platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep freed memory for reuse (no mmap'd blocks, no trimming of the heap's top).

    Returns whether it is so: False where the C library is not glibc (macOS, Windows, musl), which keep
    their own ways.
    """
    global _kept
    if _kept:
        return True
    if not glibc_malloc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # 2**31 - 1 bytes of free heap top before glibc trims it: never, in practice
    _kept = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return _kept


def keeping_freed_memory() -> bool:
    """Whether :func:`keep_freed_memory` has set this process's malloc (for run.json)."""
    return _kept
