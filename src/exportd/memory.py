"""Giving freed memory back to the system between units of work.

Arrow's allocator (mimalloc) and glibc's malloc both keep freed pages for reuse. A
worker that has just written a Parquet part holds on to ~100 MB it no longer uses, and
the next unit of work (another part, or assembling the file) allocates on top of it:
the worker's peak RSS is then the sum of two working sets instead of the larger one."""

from __future__ import annotations

import ctypes
import ctypes.util
import importlib.abc
import os
import sys
from functools import cache
from typing import Any


@cache
def libc_function(name: str) -> Any:
    """A function of the C library (glibc's malloc_trim, Linux's sync_file_range...), or
    None where the library or the function is missing."""
    path = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(path) if path else None
    except OSError:
        return None
    return getattr(libc, name, None)


def release_memory() -> None:
    """Return unused memory of Arrow's pool (when Arrow is loaded) and of the C heap
    (glibc's malloc_trim; a no-op elsewhere). Takes milliseconds."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()
    malloc_trim = libc_function("malloc_trim")
    if malloc_trim is not None:
        malloc_trim(0)


M_MMAP_THRESHOLD = -3  # mallopt's parameter number (glibc's malloc.h)
MMAP_THRESHOLD = 256 * 1024


def configure_allocator() -> None:
    """Allocate blocks of 256 KB and more with mmap, always (glibc's default threshold
    starts at 128 KB but grows up to 32 MB after such a block is freed, and Arrow's
    buffers then stay in the heap, fragmented). Freed buffers go back to the system at
    once: a Parquet worker peaked at 281 MB, 244 MB with this, at the same speed.
    Skipped when MALLOC_MMAP_THRESHOLD_ is set (glibc already applied it)."""
    mallopt = libc_function("mallopt")
    if mallopt is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


class _NoPandas(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if name == "pandas" or name.startswith("pandas."):
            raise ModuleNotFoundError("pandas is kept out of exportd's processes", name=name)
        return None


def keep_pandas_out() -> None:
    """exportd never uses pandas, but pyarrow imports it (46 MB of a worker's memory, and
    0.4 s) the first time it converts a Python list, only to ask whether the list is a
    pandas object. The exportd command makes `import pandas` fail in its own process, as
    if it were not installed; pyarrow then goes on without it. Nothing changes when
    pandas is already loaded."""
    if "pandas" not in sys.modules and not any(isinstance(f, _NoPandas) for f in sys.meta_path):
        sys.meta_path.insert(0, _NoPandas())
