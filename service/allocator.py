"""Hand memory freed by task staging back to the operating system (glibc only).

Staging a task allocates tens of MB of short-lived tensors (the file's bytes, the parsed tensors,
int64 positions before they are packed to int32). glibc keeps freed heap memory mapped, so without
help each staged task left ~15 MB resident beyond what it keeps: 134 MB for ten MiniLM tasks
(bench/bench_memory.py). ``malloc_trim`` after a task is staged returns those pages. Pinning
glibc's mmap threshold instead (``mallopt``) freed as much, but made every large activation of a
forward pass a fresh ``mmap`` and the forward pass 20-25 % slower.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return None
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim
    except (OSError, AttributeError):  # musl and others have no malloc_trim
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_memory() -> bool:
    """Return free heap pages to the OS; False where the C library has no ``malloc_trim``."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
