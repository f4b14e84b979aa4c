"""Handing the heap's free pages back to the operating system.

A long-running crmsync process allocates and frees on many threads (the event loop's
executor, the store's connection pool). glibc keeps what each thread's arena freed for
later reuse, so the resident size climbs for the first minutes while the memory in use
stays flat: in a soak (bench/soak.py, measured with ``mallinfo2``) the memory in use
held at ~28 MiB while free-but-kept memory grew from 5 to 27 MiB in ten minutes.
``malloc_trim(0)`` returns the free pages of every arena; the worker and the console's
upkeep loops call it, at most once a minute per process. Elsewhere than glibc it does
nothing.
"""

from __future__ import annotations

import ctypes
import sys
import threading
import time
from collections.abc import Callable

TRIM_INTERVAL_SECONDS = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, for one, has no malloc_trim)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_trim = _malloc_trim()
_lock = threading.Lock()
_last = float("-inf")


def release_free_memory(
    *, interval: float = TRIM_INTERVAL_SECONDS, clock: Callable[[], float] = time.monotonic
) -> bool:
    """Return free heap pages to the system, unless done less than ``interval`` ago in
    this process. True when it trimmed."""
    global _last
    if _trim is None:
        return False
    with _lock:
        now = clock()
        if now - _last < interval:
            return False
        _last = now
    _trim(0)
    return True
