"""Which peers are idle: the pure selection behind endpoint scrubbing.

A backend reads each peer's endpoint and last handshake inside one call and
reduces them to a :class:`PeerActivity`, which lives only for that selection:
handshake times are compared here and dropped, never stored, logged or counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple


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
