"""One reconcile of one interface: read back, plan, guard, apply.

The shell around ``reconcile.plan``. Two guards shape the plan before it is
sent, and neither stops the rest of it:

- the removal guard holds back the feed's removals when they would take more
  than ``max_removal_ratio`` of the peers an interface holds (expiry is the
  agent's own decision and is not limited); additions and updates still go
  out, so new sign-ups never wait behind a suspicious feed;
- the peer limit holds back the additions that would take the interface past
  what its implementation accepts (wireguard-go refuses more than 65,536
  peers), so what fits is applied instead of the same failure being retried.

Held-back counts are part of the outcome, for the log, ``/status`` and
``/metrics``. Nothing is sent when there is nothing to change.

Reading 20,000 peers back costs more than applying a small change, so a caller
may pass the state it last saw (``known``) and skip the read; the daemon does
so between its periodic drift repairs.

A drift repair need not decode what did not change either. A pass that read
the interface back and found nothing to send leaves the configuration digest
of that read (``SyncOutcome.digest``, see ``Backend.config_digest``). When the
next repair is due, a caller that still holds ``known`` and that digest passes
both: the interface's digest is asked for first, and only if it differs (or
cannot be had) is the interface read back and planned against. Whatever the
pass sends, and any failure, leaves no digest: after the agent changed the
interface itself, the next repair reads it back. :func:`plan_basis` and
:func:`digest_after` are that decision.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum

from nodeagent.core.backend import Backend
from nodeagent.core.model import DesiredInterface, Peer, Plan
from nodeagent.core.reconcile import apply_to, plan, share_equal


class Basis(Enum):
    """What a pass planned against."""

    KNOWN = "known"  # the peers the last pass left, trusted between drift repairs
    DIGEST = "digest"  # the same, at a drift repair, the interface's digest unchanged
    READ_BACK = "read_back"  # the peers read back from the interface


def plan_basis(
    *,
    known: bool,
    recorded: int | None,
    repair_due: bool,
    digest: Callable[[], int | None],
) -> Basis:
    """What to plan against, asking ``digest()`` (the interface's) only when it decides.

    Without ``known`` state, or at a drift repair without a ``recorded``
    digest, the interface is read back; between repairs ``known`` is trusted;
    at a repair it is trusted only if the digest equals the recorded one. A
    digest that differs or is unknown (None) always ends in the read-back.
    """
    if not known:
        return Basis.READ_BACK
    if not repair_due:
        return Basis.KNOWN
    if recorded is None:
        return Basis.READ_BACK
    current = digest()
    return Basis.DIGEST if current is not None and current == recorded else Basis.READ_BACK


def digest_after(basis: Basis, applied: bool, recorded: int | None, read: int | None) -> int | None:
    """The digest of what the interface holds after a pass; None: read back at the next repair.

    Only a read-back that found nothing to send vouches for a digest (the
    read's own, ``read``); a pass that sent nothing keeps the ``recorded``
    one it planned against; any change the agent sends drops it.
    """
    if applied:
        return None
    if basis is Basis.READ_BACK:
        return read
    return recorded


@dataclass(frozen=True, slots=True)
class SyncOutcome:
    interface: str
    added: int
    updated: int
    removed: int
    unchanged: int
    ms: float
    read_back: bool = True
    # Removals the guard held back, and additions beyond the implementation's limit.
    held_removals: int = 0
    held_additions: int = 0
    # What the interface holds afterwards: the ``known`` state of the next pass,
    peers: Mapping[bytes, Peer] = field(default_factory=dict, repr=False, compare=False)
    # and its configuration digest if the pass vouches for one (``digest_after``).
    digest: int | None = field(default=None, repr=False, compare=False)
    basis: Basis = Basis.READ_BACK

    @property
    def peer_count(self) -> int:
        """Peers on the interface after the pass: kept, updated and added ones."""
        return self.unchanged + self.updated + self.added

    def event(self) -> str:
        held = ""
        if self.held_removals:
            held += f" held_removals={self.held_removals}"
        if self.held_additions:
            held += f" held_additions={self.held_additions}"
        return (
            f"interface={self.interface} added={self.added} updated={self.updated} "
            f"removed={self.removed} unchanged={self.unchanged}{held} ms={self.ms:.0f}"
        )


def removal_allowed(p: Plan, desired: DesiredInterface, actual_count: int, ratio: float) -> bool:
    """Whether the feed-driven removals of ``p`` stay within ``ratio`` of the current peers."""
    if actual_count == 0:
        return True
    by_feed = sum(1 for k in p.remove if k not in desired.peers)
    return by_feed <= ratio * actual_count


def guard_removals(p: Plan, desired: DesiredInterface, actual_count: int, ratio: float) -> Plan:
    """``p`` without the feed's removals if they exceed ``ratio``; expired peers still go."""
    if removal_allowed(p, desired, actual_count, ratio):
        return p
    expired = tuple(k for k in p.remove if k in desired.peers)
    return Plan(add=p.add, update=p.update, remove=expired)


def fit_limit(p: Plan, actual_count: int, limit: int | None) -> Plan:
    """``p`` with only as many additions as keep the interface within ``limit`` peers."""
    if limit is None:
        return p
    room = max(limit - (actual_count - len(p.remove)), 0)
    if len(p.add) <= room:
        return p
    # The plan's additions are sorted by key: the same ones wait on every pass.
    return Plan(add=p.add[:room], update=p.update, remove=p.remove)


def sync_interface(
    backend: Backend,
    desired: DesiredInterface,
    now: datetime,
    max_removal_ratio: float = 1.0,
    known: Mapping[bytes, Peer] | None = None,
    *,
    digest: int | None = None,
    repair_due: bool = False,
) -> SyncOutcome:
    """Bring one interface in line with ``desired`` at time ``now``, as far as the guards allow.

    ``known`` is what the interface held after the previous pass; without it the
    interface is read back first. ``digest`` is the configuration digest the
    interface had while it held ``known`` (the previous outcome's); with
    ``repair_due`` (a drift repair), ``known`` is trusted only if the
    interface's digest still equals it, and read back otherwise.
    """
    started = time.monotonic()
    basis = plan_basis(
        known=known is not None,
        recorded=digest,
        repair_due=repair_due,
        digest=backend.config_digest,
    )
    read_digest: int | None = None
    if known is None or basis is Basis.READ_BACK:
        device = backend.read()
        actual, read_digest = device.peers, device.digest
    else:
        actual = known
    active = desired.active(now)
    wanted = plan(active, actual)
    guarded = guard_removals(wanted, desired, len(actual), max_removal_ratio)
    p = fit_limit(guarded, len(actual), backend.max_peers)
    if not p.empty:
        backend.apply(p)
    return SyncOutcome(
        interface=backend.interface,
        added=len(p.add),
        updated=len(p.update),
        removed=len(p.remove),
        unchanged=len(actual) - len(p.update) - len(p.remove),
        ms=(time.monotonic() - started) * 1000,
        read_back=basis is Basis.READ_BACK,
        held_removals=len(wanted.remove) - len(p.remove),
        held_additions=len(wanted.add) - len(p.add),
        # One copy of each peer held, not two: the desired object where equal.
        peers=share_equal(apply_to(actual, p) if not p.empty else actual, active),
        digest=digest_after(basis, not p.empty, digest, read_digest),
        basis=basis,
    )
