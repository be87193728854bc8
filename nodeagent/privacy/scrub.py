"""Endpoint scrubbing: idle WireGuard peers are removed and re-added with the same configuration.

WireGuard keeps a peer's last endpoint (the client's IP address) and its last
handshake time for as long as the peer exists. Re-creating an idle peer wipes
both while keeping its key, preshared key and routes, so the client reconnects
as before the next time it sends.

The core (:func:`select_idle`) is pure. The shell (:func:`scrub_once`) asks a
backend port for its idle peers and re-adds them. The port finds them and their
configuration in one read of the interface, the same read on every pass: a
second read made only when someone went quiet would date that moment for
anyone who sees the backend's traffic or its debug log. Handshake times live
only in local variables of the backend's parser: they are read, compared and
dropped, never stored, logged or counted. Per-pass peer counts are not logged
either: "one peer went idle at 12:03" on a quiet server is an access time.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, NamedTuple, Protocol, runtime_checkable

from ..model import Peer

if TYPE_CHECKING:
    from ..wireguard.backend import Backend

log = logging.getLogger(__name__)


class PeerActivity(NamedTuple):
    """What the scrubber needs to know of one peer, for the length of one selection.

    ``handshake_age`` is seconds since the last handshake, None if it never had one.
    """

    public_key: bytes
    has_endpoint: bool
    handshake_age: float | None

    def __repr__(self) -> str:
        return "PeerActivity(<redacted>)"


def is_idle(activity: PeerActivity, idle_after: float) -> bool:
    """Whether a peer holds an endpoint and has had no handshake for ``idle_after`` seconds.

    A negative age (the wall clock stepped back) counts as recent: a peer in
    use must never be touched, and a missed scrub is repaired on a later pass.
    """
    if not activity.has_endpoint:
        return False
    age = activity.handshake_age
    return age is None or age >= idle_after


def select_idle(activities: Iterable[PeerActivity], idle_after: float) -> list[bytes]:
    """The keys of the peers to scrub, in input order."""
    return [a.public_key for a in activities if is_idle(a, idle_after)]


def handshake_age(sec: int, nsec: int, now: float) -> float | None:
    """Seconds from a handshake at wall-clock ``sec``.``nsec`` to ``now``; None for "never"."""
    if sec == 0 and nsec == 0:
        return None
    return now - (sec + nsec / 1e9)


@runtime_checkable
class ScrubPort(Protocol):
    """What the scrubber needs of a WireGuard interface."""

    @property
    def interface(self) -> str: ...

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Each peer with an endpoint and no handshake for ``idle_after`` s, as configured.

        One read of the interface, the same whether or not any peer is idle,
        yields both the activity and the configuration, and logs nothing.
        """
        ...

    def readd(self, peers: Sequence[Peer]) -> None:
        """Remove each peer and add it again with the same configuration; nothing if empty.

        Each peer's removal and re-addition go to the implementation in one
        transaction, so its routes are missing for the shortest possible time.
        """
        ...


def scrub_port(backend: Backend | ScrubPort) -> ScrubPort:
    """The scrub port of a backend: the backend itself if it has the capability, else an adapter."""
    if isinstance(backend, ScrubPort):
        return backend
    from ..wireguard.uapi import UapiBackend

    if isinstance(backend, UapiBackend):
        from ..wireguard.uapi_idle import UapiScrubPort

        return UapiScrubPort(backend)
    from ..wireguard.netlink import KernelBackend

    if isinstance(backend, KernelBackend):
        from ..wireguard.netlink_idle import KernelScrubPort

        return KernelScrubPort(backend)
    raise TypeError(f"{type(backend).__name__} cannot be scrubbed")


def scrub_once(port: ScrubPort, idle_after: float) -> int:
    """One scrub pass over one interface; returns how many peers were re-added.

    The count is for tests and for a cumulative metric, never for a log line.
    Every pass makes the same calls: one read, one re-add (which sends nothing
    when no peer is idle), one log line.
    """
    peers = port.idle_peers(idle_after)
    port.readd(peers)
    # The same line on every pass, without counts or durations (which grow
    # when someone went quiet): the log must not say when that was.
    log.debug("scrub_pass interface=%s", port.interface)
    return len(peers)
