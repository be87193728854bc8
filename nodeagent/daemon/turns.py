"""Worker threads take turns at the WireGuard backends; a backend is never closed under a turn.

A backend holds one conversation at a time (its netlink socket is not shared
across threads) and the daemon's passes, a reconcile or a scrub, each run in a
worker thread: ``with turns:`` around a pass makes them take turns.

A reload retires the backend of an interface whose settings changed while a
pass may still be using it: :meth:`BackendTurns.retire` closes it at once when
no pass runs, else the pass closes it as its turn ends, so no socket is pulled
from under a running pass and the next pass sees only the new backend.

On the way out :meth:`BackendTurns.stop` refuses every turn not yet begun (a
pass waiting for its turn ends at once, touching nothing, rather than waiting
for a turn that would never come); the agent waits for the running one, and
past its grace period closes the backends under it, which every backend's
``close()`` allows from any thread.
"""

from __future__ import annotations

import contextlib
import threading

from nodeagent.core.backend import Backend, BackendError


class TurnsStopped(BackendError):
    """The agent is stopping: no new conversation with a backend begins."""


def close_quietly(backend: Backend) -> None:
    # A failure to release a socket on the way out is nothing an operator can act on.
    with contextlib.suppress(Exception):
        backend.close()


class BackendTurns:
    """One pass at a time over the backends; closing of retired backends; refusal once stopping.

    ``close()`` of a backend must not block (it only marks the backend closed
    and wakes a call in flight): it is called with this object's lock held.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._busy = False
        self._stopping = False
        self._retired: list[Backend] = []

    def __enter__(self) -> None:
        with self._cond:
            while self._busy and not self._stopping:
                self._cond.wait()
            if self._stopping:
                raise TurnsStopped("backends closed: the agent is stopping")
            self._busy = True

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            # Still this pass's turn: no other thread is using what it closes.
            self._close_retired()
            self._busy = False
            self._cond.notify()

    @property
    def busy(self) -> bool:
        """A pass is running."""
        with self._cond:
            return self._busy

    def retire(self, backend: Backend) -> None:
        """Close ``backend`` now if no pass runs, else when the running pass ends its turn."""
        with self._cond:
            self._retired.append(backend)
            if not self._busy:
                self._close_retired()

    def take_retired(self) -> list[Backend]:
        """The retired backends not closed yet, for the caller to close (on the way out)."""
        with self._cond:
            retired, self._retired = self._retired, []
            return retired

    def stop(self) -> None:
        """Refuse every turn from now on; a pass already running goes on."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def _close_retired(self) -> None:
        retired, self._retired = self._retired, []
        for backend in retired:
            close_quietly(backend)
