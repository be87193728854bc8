"""The small interface every WireGuard backend implements.

Backends are synchronous (one blocking netlink or UAPI conversation at a time);
the daemon runs them in a worker thread. They speak typed values only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan


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

    def presence(self) -> Hashable | None:
        """What identifies the interface's current incarnation; None while it is absent.

        It changes when the interface is deleted and created again (a
        wireguard-go restart, ``ip link del`` and a ``wg-quick up``), which
        leaves it empty. Cheap (a system call or two, no conversation with the
        implementation), callable from any thread, also during a call in flight.
        """
        ...

    def apply(self, plan: Plan) -> None:
        """Send the plan: additions and updates first, removals last. Never flushes peers."""
        ...

    def setup(self, setup: InterfaceSetup) -> None:
        """Create the interface if needed and set key, port and addresses where they differ."""
        ...

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Each peer with an endpoint and no handshake for ``idle_after`` s, as configured.

        One read of the interface, the same whether or not any peer is idle,
        yields both the activity and the configuration, and logs nothing:
        a second read made only when someone went quiet would date that moment.
        """
        ...

    def readd(self, peers: Sequence[Peer]) -> None:
        """Remove each peer and add it again with the same configuration; nothing if empty.

        Each peer's removal and re-addition go to the implementation in one
        transaction, so its routes are missing for the shortest possible time.
        """
        ...

    def close(self) -> None:
        """Release the backend's sockets; callable from any thread, also under a call in flight.

        A call in flight then stops waiting and raises ``BackendError`` (what it
        already sent stands); the real backends refuse every call after this.
        """
        ...
