"""release_freed_memory gives the heap's free pages back: freed memory that glibc would
keep resident leaves the resident set."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamaforge.models import memory


def _resident_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no RssAnon in /proc/self/status")


@pytest.mark.skipif(memory._malloc_trim() is None, reason="not glibc")
def test_freed_heap_blocks_leave_the_resident_set():
    # 64 KB blocks come from the heap (below glibc's mmap threshold), each followed by a
    # small one that stays: freeing the big ones leaves holes that glibc keeps resident.
    big, keep = [], []
    for _ in range(2000):
        big.append(bytearray(64 * 1024))
        keep.append(bytearray(1024))  # > 512 bytes: from malloc, not pymalloc
    held = _resident_anon_bytes()
    del big
    freed_but_resident = _resident_anon_bytes()
    memory.release_freed_memory()
    released = _resident_anon_bytes()
    assert freed_but_resident > held - 32 * 2**20  # glibc kept most of the 125 MB
    assert released < freed_but_resident - 100 * 2**20
    assert len(keep) == 2000
