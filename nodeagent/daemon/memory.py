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

# mallopt() parameters (malloc.h) and the fixed threshold for both.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
FIXED_THRESHOLD = 128 * 1024


def _libc_function(name: str, *argtypes: type) -> Callable[..., int] | None:
    try:
        fn = getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None
    fn.argtypes = list(argtypes)
    fn.restype = ctypes.c_int
    found: Callable[..., int] = fn
    return found


_TRIM = _libc_function("malloc_trim", ctypes.c_size_t)
_MALLOPT = _libc_function("mallopt", ctypes.c_int, ctypes.c_int)


def tune_malloc() -> bool:
    """Fix malloc's thresholds for a daemon that reads large replies now and then.

    glibc raises its mmap and trim thresholds after a large block is freed
    (up to 32 and 64 MB), so after one full read-back of a 20 MB reply the
    chunks of the next one stay in the worker thread's heap as free space,
    which ``malloc_trim`` does not hand back from a thread's heap top: about
    30 MB more resident for good at 60,000 peers. Fixed at 128 KB, a large
    block is mapped and unmapped on its own and a heap's free top is
    returned as it is freed. Returns whether the C library took them.
    """
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, FIXED_THRESHOLD)) and bool(
        _MALLOPT(_M_TRIM_THRESHOLD, FIXED_THRESHOLD)
    )


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (a few ms; any thread)."""
    if _TRIM is not None:
        _TRIM(0)
