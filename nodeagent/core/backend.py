"""The small interface every WireGuard backend implements.

Backends are synchronous (one blocking netlink or UAPI conversation at a time);
the daemon runs them in a worker thread. They speak typed values only.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Protocol

from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan

#: Digests are sums of ``hash()`` values, kept to 64 bits.
DIGEST_MASK = (1 << 64) - 1


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
        """The interface's current key, port and peers, read back from the implementation.

        The device carries the configuration digest of the same reply
        (``Device.digest``), so that it describes exactly what was read.
        """
        ...

    def config_digest(self) -> int | None:
        """The interface's configuration digest: one get or dump, and nothing decoded.

        A 64-bit number computed from what the agent configures: each peer's
        public key, preshared key and allowed IPs, and the device's private key
        and port where the reply holds them. Never from endpoints, handshake
        times or byte counts, so a peer's activity does not change it and none
        of it is kept. The order in which the implementation lists peers does
        not matter. Equal digests mean, but for a 2**-64 chance, an unchanged
        configuration; a different digest may also come from a change in how a
        peer's lines are laid out, so it only ever means "read back". Digests are
        comparable only within one backend object (``hash()`` is salted per
        process), and only with ``read().digest`` and other ``config_digest()``
        values of it. None: a reply laid out so that its digest would vouch for
        nothing (read back). A malformed or refused reply raises ``BackendError``.
        """
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
