"""Handing freed memory back to the system after the large passes.

A read-back, a scrub read or a snapshot of 100,000 peers allocates and frees
hundreds of thousands of objects in a worker thread. CPython returns its own
arenas when they empty, but what went through glibc's malloc (the arrays of
large lists and dicts, the reply buffers; worker threads get their own malloc
arenas) stays in the process as free space until ``malloc_trim`` releases
it. Without glibc (musl) this is a no-op.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        fn = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    trim: Callable[[int], int] = fn
    return trim


_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (a few ms; any thread)."""
    if _TRIM is not None:
        _TRIM(0)
