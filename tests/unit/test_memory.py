"""Returning free heap pages to the system: paced per process, and it really trims."""

from __future__ import annotations

import ctypes
import sys

import pytest

from crmsync import memory

glibc = pytest.mark.skipif(memory._libc is None, reason="not glibc: nothing to trim")


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@glibc
def test_trims_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memory, "_last", float("-inf"))
    now = [1000.0]
    assert memory.release_free_memory(interval=60, clock=lambda: now[0])
    now[0] += 59
    assert not memory.release_free_memory(interval=60, clock=lambda: now[0])
    now[0] += 1
    assert memory.release_free_memory(interval=60, clock=lambda: now[0])


@glibc
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_free_pages_go_back_to_the_system(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many small blocks freed except one at the top of the heap: glibc keeps the pages
    (the heap cannot shrink past the live block) until malloc_trim hands them back."""
    libc = ctypes.CDLL("libc.so.6")
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(4000) for _ in range(20_000)]  # ~80 MB below the mmap threshold
    for block in blocks:
        ctypes.memset(block, 1, 4000)
    keep = blocks.pop()
    for block in blocks:
        libc.free(block)
    before = _rss_kib()
    monkeypatch.setattr(memory, "_last", float("-inf"))
    assert memory.release_free_memory()
    after = _rss_kib()
    libc.free(keep)
    assert before - after > 40_000, (before, after)


@glibc
def test_arena_cap_yields_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert not memory.limit_arenas()
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    assert memory.limit_arenas()
