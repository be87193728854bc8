"""The small interface every WireGuard backend implements.

Backends are synchronous (one blocking netlink or UAPI conversation at a time);
the daemon runs them in a worker thread. They speak typed values only.
"""

from __future__ import annotations

from typing import Protocol

from ..model import Device, InterfaceSetup, Plan


class BackendError(Exception):
    """The kernel or the userspace daemon refused or failed a request.

    Messages name the interface and the operation, never a key or an address.
    """


class InterfaceMissing(BackendError):
    """The interface does not exist (and the agent was not asked to create it)."""


class Backend(Protocol):
    """One WireGuard interface."""

    @property
    def interface(self) -> str: ...

    @property
    def max_peers(self) -> int | None:
        """The most peers the implementation accepts on one interface (None: no known limit)."""
        ...

    def read(self) -> Device:
        """The interface's current key, port and peers, read back from the implementation."""
        ...

    def apply(self, plan: Plan) -> None:
        """Send the plan: additions and updates first, removals last. Never flushes peers."""
        ...

    def setup(self, setup: InterfaceSetup) -> None:
        """Create the interface if needed and set key, port and addresses where they differ."""
        ...

    def close(self) -> None:
        """Release the backend's sockets; callable from any thread, also under a call in flight.

        A call in flight then stops waiting and raises ``BackendError`` (what it
        already sent stands); the real backends refuse every call after this.
        """
        ...
