"""Keep the C allocator from holding on to freed memory (glibc only).

Staging a task allocates tens of MB of short-lived tensors (parsed file, int64 positions before
they are packed to int32). glibc serves large blocks with ``mmap`` and returns them on free, but
after the first such free it raises its mmap threshold (up to 32 MB), so later blocks of that size
come from the heap, where freed memory stays mapped and resident. Pinning the threshold keeps large
blocks on ``mmap``: measured with ten cached MiniLM tasks, the server's RSS went from 989 MB to
848 MB (bench/bench_memory.py).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3  # mallopt parameter, from glibc's malloc.h
MMAP_THRESHOLD_BYTES = 128 * 1024  # glibc's initial value, now fixed


def pin_mmap_threshold(threshold: int = MMAP_THRESHOLD_BYTES) -> bool:
    """Fix glibc's mmap threshold (no dynamic raising); False where the C library is not glibc."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    try:
        mallopt = ctypes.CDLL(libc_name).mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    pinned = mallopt(_M_MMAP_THRESHOLD, threshold) == 1
    if not pinned:
        logger.warning("could not pin the allocator's mmap threshold; freed staging memory may stay resident")
    return pinned
