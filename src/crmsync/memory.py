"""Keeping a long-running process's resident size flat.

A crmsync process allocates and frees on many threads (the event loop's executor, the
web server's thread pool, the store's connections). glibc gives threads their own
malloc arenas, up to eight per core, and keeps what each arena freed for later reuse, so
the resident size climbs while the memory in use stays flat (measured in the soak:
docs/benchmarks.md).

- ``limit_arenas``: at most two arenas (what ``MALLOC_ARENA_MAX=2`` does), called by the
  ``crmsync`` command before any thread starts; an explicit ``MALLOC_ARENA_MAX`` in the
  environment is left to rule.
- ``release_free_memory``: ``malloc_trim(0)`` returns the free pages of every arena; the
  worker and the console's upkeep loops call it, at most once a minute per process.

Elsewhere than glibc both do nothing.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Callable

TRIM_INTERVAL_SECONDS = 60.0
ARENAS = 2
_M_ARENA_MAX = -8  # glibc's mallopt parameter (malloc.h)


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not glibc (musl, for one, has no malloc_trim)
        return None
    return libc


_libc = _glibc()
_lock = threading.Lock()
_last = float("-inf")


def release_free_memory(
    *, interval: float = TRIM_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
) -> bool:
    """Return free heap pages to the system, unless done less than ``interval`` ago in
    this process. True when it trimmed."""
    global _last
    if _libc is None:
        return False
    with _lock:
        now = clock()
        if now - _last < interval:
            return False
        _last = now
    _libc.malloc_trim(0)
    return True


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; True when set. Call before threads start: arenas
    already made stay."""
    if _libc is None or "MALLOC_ARENA_MAX" in os.environ:
        return False
    return bool(_libc.mallopt(_M_ARENA_MAX, arenas))
