"""SIGINT and SIGTERM for the demo: one clean way out, at any moment.

:func:`armed` turns the first SIGINT or SIGTERM into :class:`Interrupted`,
raised wherever the main thread is. Later signals are only recorded, so the
teardown that follows cannot itself be cut short. Inside :func:`held` (a
process started and not yet registered, a namespace made and not yet
recorded) the signal waits until the block ends, so nothing the lab makes is
ever outside its books.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import FrameType


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived (a BaseException: no ``except Exception`` swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class _State:
    armed: bool = False
    raised: bool = False
    depth: int = 0
    pending: int | None = None


_state = _State()


def _handler(signum: int, frame: FrameType | None) -> None:
    if not _state.armed or _state.raised:
        return
    if _state.depth:
        _state.pending = signum
        return
    _state.raised = True
    raise Interrupted(signum)


@contextmanager
def armed() -> Iterator[None]:
    """SIGINT/SIGTERM raise :class:`Interrupted` (once) inside the block."""
    old = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _state.armed, _state.raised, _state.depth, _state.pending = True, False, 0, None
    for sig in old:
        signal.signal(sig, _handler)
    try:
        yield
    finally:
        _state.armed = False
        for sig, handler in old.items():
            signal.signal(sig, handler)


def disarm() -> None:
    """From here on signals are recorded, not raised: the teardown runs to its end."""
    _state.armed = False


@contextmanager
def held() -> Iterator[None]:
    """Delay a signal until the block ends (it is raised then, if still armed)."""
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
        if not _state.depth and _state.pending is not None:
            pending, _state.pending = _state.pending, None
            if _state.armed and not _state.raised:
                _state.raised = True
                raise Interrupted(pending)
