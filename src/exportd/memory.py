"""Giving freed memory back to the system between units of work.

Arrow's allocator (mimalloc) and glibc's malloc both keep freed pages for reuse. A
worker that has just written a Parquet part holds on to ~100 MB it no longer uses, and
the next unit of work (another part, or assembling the file) allocates on top of it:
the worker's peak RSS is then the sum of two working sets instead of the larger one."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    return libc if libc is not None and hasattr(libc, "malloc_trim") else None


def release_memory() -> None:
    """Return unused memory of Arrow's pool (when Arrow is loaded) and of the C heap
    (glibc's malloc_trim; a no-op elsewhere). Takes milliseconds."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)
