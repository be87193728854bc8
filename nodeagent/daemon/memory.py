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
#: The serving process's, above asyncio's 256 KiB receive buffer (see tune_malloc).
SERVING_THRESHOLD = 1024 * 1024


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


def tune_malloc(threshold: int = FIXED_THRESHOLD) -> bool:
    """Fix malloc's thresholds for a daemon that reads large replies now and then.

    glibc raises its mmap and trim thresholds after a large block is freed
    (up to 32 and 64 MB), so after one full read-back of a 20 MB reply the
    chunks of the next one stay in the worker thread's heap as free space,
    which ``malloc_trim`` does not hand back from a thread's heap top: about
    30 MB more resident for good at 60,000 peers. Fixed at 128 KB, a large
    block is mapped and unmapped on its own and a heap's free top is
    returned as it is freed. Returns whether the C library took them.

    The serving process fixes both at :data:`SERVING_THRESHOLD` instead. Its
    event loop receives each request into a new 256 KiB buffer, cut to size
    at once: under 128 KB, or under glibc's own thresholds (the cut buffer
    freed is too small to raise them), every request mapped, faulted in,
    shrank and unmapped one, and answered a third fewer requests a second.
    """
    if _MALLOPT is None:
        return False
    return bool(_MALLOPT(_M_MMAP_THRESHOLD, threshold)) and bool(
        _MALLOPT(_M_TRIM_THRESHOLD, threshold)
    )


def release_free_memory() -> None:
    """Return the free pages of every malloc arena to the system (a few ms; any thread)."""
    if _TRIM is not None:
        _TRIM(0)
