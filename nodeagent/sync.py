"""One reconcile of one interface: read back, plan, guard, apply.

The shell around ``reconcile.plan``. It refuses a plan that would remove more
than ``max_removal_ratio`` of the peers an interface holds because the feed
says so (expiry is the agent's own decision and is not limited), and it sends
nothing when there is nothing to change.

Reading 20,000 peers back costs more than applying a small change, so a caller
may pass the state it last saw (``known``) and skip the read; the daemon does
so between its periodic read-backs, which repair any drift.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime

from .model import DesiredInterface, Peer, Plan
from .reconcile import apply_to, plan
from .wireguard.backend import Backend


class RemovalRefused(Exception):
    """The feed would remove too many of an interface's peers at once."""


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    interface: str
    added: int
    updated: int
    removed: int
    unchanged: int
    ms: float
    read_back: bool = True
    # What the interface holds afterwards: the ``known`` state of the next pass.
    peers: Mapping[bytes, Peer] = field(default_factory=dict, repr=False, compare=False)

    def event(self) -> str:
        return (
            f"interface={self.interface} added={self.added} updated={self.updated} "
            f"removed={self.removed} unchanged={self.unchanged} ms={self.ms:.0f}"
        )


def removal_allowed(p: Plan, desired: DesiredInterface, actual_count: int, ratio: float) -> bool:
    """Whether the feed-driven removals of ``p`` stay within ``ratio`` of the current peers."""
    if actual_count == 0:
        return True
    by_feed = sum(1 for k in p.remove if k not in desired.peers)
    return by_feed <= ratio * actual_count


def sync_interface(
    backend: Backend,
    desired: DesiredInterface,
    now: datetime,
    max_removal_ratio: float = 1.0,
    known: Mapping[bytes, Peer] | None = None,
) -> SyncOutcome:
    """Bring one interface in line with ``desired`` at time ``now``.

    ``known`` is what the interface held after the previous pass; without it the
    interface is read back first.
    """
    started = time.monotonic()
    actual = backend.read().peers if known is None else known
    p = plan(desired.active(now), actual)
    if not removal_allowed(p, desired, len(actual), max_removal_ratio):
        raise RemovalRefused(
            f"{backend.interface}: feed would remove {len(p.remove)} of {len(actual)} peers"
        )
    if not p.empty:
        backend.apply(p)
    return SyncOutcome(
        interface=backend.interface,
        added=len(p.add),
        updated=len(p.update),
        removed=len(p.remove),
        unchanged=len(actual) - len(p.update) - len(p.remove),
        ms=(time.monotonic() - started) * 1000,
        read_back=known is None,
        peers=apply_to(actual, p) if not p.empty else actual,
    )
