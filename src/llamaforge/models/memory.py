"""Giving freed heap memory back to the OS after a one-off phase.

glibc's malloc keeps freed memory in the process for reuse; a phase that allocates and frees
a lot once (dequantizing a GGUF file, packing frozen weights) leaves holes that later
allocations of other sizes do not fill, and they stay in the resident set, under every
later peak. ``malloc_trim(0)`` returns the free pages of those holes to the OS (their
address space stays with the heap, so a later allocation there costs only page faults).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return None
    return trim


def release_freed_memory() -> None:
    """Collect garbage, then return the heap's free pages to the OS (a no-op off glibc)."""
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
