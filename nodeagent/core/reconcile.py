"""The reconcile core: the difference between desired and actual peers, as a Plan.

Pure. Applying the plan and planning again yields an empty plan; fields that
already match are never sent, so established sessions are never disturbed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter

from nodeagent.core.model import (
    Peer,
    PeerTable,
    PeerUpdate,
    Plan,
    RecordPeers,
    peer_record,
    record_preshared_key,
    record_routes,
)
from nodeagent.core.routes import AllowedIPs

_BY_KEY = attrgetter("public_key")


def plan(desired: Mapping[bytes, Peer], actual: Mapping[bytes, Peer]) -> Plan:
    """Peers to add, fields to update, and peers to remove to turn ``actual`` into ``desired``."""
    if desired is actual:
        # A pass with nothing new holds the feed's own mapping as the interface's state.
        return Plan()
    if isinstance(desired, PeerTable):
        return _plan_records(desired.records, actual)
    add: list[Peer] = []
    update: list[PeerUpdate] = []
    get = actual.get
    # The hot loop of a small change to 20,000 peers: the identity test catches the
    # peers a delta feed carried over, and comparing the two fields directly is
    # several times cheaper than the dataclass's __eq__.
    for key, want in desired.items():
        have = get(key)
        if have is want:
            continue
        if have is None:
            add.append(want)
            continue
        ips_differ = want.routes != have.routes
        psk_differs = want.preshared_key != have.preshared_key
        if ips_differ or psk_differs:
            update.append(
                PeerUpdate(
                    public_key=key,
                    allowed_ips=want.allowed_ips if ips_differ else None,
                    change_preshared_key=psk_differs,
                    preshared_key=want.preshared_key if psk_differs else None,
                )
            )
    return _sorted_plan(add, update, [key for key in actual if key not in desired])


def _plan_records(desired: Mapping[bytes, bytes], actual: Mapping[bytes, Peer]) -> Plan:
    """:func:`plan` of a :class:`PeerTable`'s records: a ``Peer`` made only for a change."""
    get = actual.records.get if isinstance(actual, PeerTable) else _record_getter(actual)
    added: list[bytes] = []
    update: list[PeerUpdate] = []
    for key, want in desired.items():
        have = get(key)
        if have == want:  # shared, or equal: the same peer
            continue
        if have is None:
            added.append(key)
            continue
        routes, psk = record_routes(want), record_preshared_key(want)
        ips_differ = routes != record_routes(have)
        psk_differs = psk != record_preshared_key(have)
        update.append(
            PeerUpdate(
                public_key=key,
                allowed_ips=AllowedIPs.canonical(routes) if ips_differ else None,
                change_preshared_key=psk_differs,
                preshared_key=psk if psk_differs else None,
            )
        )
    added.sort()
    add = RecordPeers(added, [desired[key] for key in added])  # no Peer made: made as sent
    return _sorted_plan(add, update, [key for key in actual if key not in desired])


def _sorted_plan(
    add: list[Peer] | RecordPeers, update: list[PeerUpdate], remove: list[bytes]
) -> Plan:
    """The plan of these changes, sorted so that it is the same whatever the dict order was
    (``RecordPeers`` come sorted by key)."""
    if isinstance(add, list):
        add.sort(key=_BY_KEY)  # attrgetter: no Python frame per peer
    update.sort(key=_BY_KEY)
    remove.sort()
    adds = tuple(add) if isinstance(add, list) else add
    return Plan(add=adds, update=tuple(update), remove=tuple(remove))


def apply_to(actual: Mapping[bytes, Peer], p: Plan) -> Mapping[bytes, Peer]:
    """The peers an interface holds once ``p`` is applied to ``actual``: a backend's model.

    A :class:`PeerTable` gives a table (the records of the peers ``p`` leaves
    alone shared), any other mapping a ``dict``.
    """
    if isinstance(actual, PeerTable):
        return _apply_to_records(actual.records, p)
    result = dict(actual)
    for peer in p.add:
        result[peer.public_key] = peer
    for u in p.update:
        old = result[u.public_key]
        result[u.public_key] = Peer(
            public_key=u.public_key,
            allowed_ips=old.allowed_ips if u.allowed_ips is None else u.allowed_ips,
            preshared_key=u.preshared_key if u.change_preshared_key else old.preshared_key,
        )
    for key in p.remove:
        result.pop(key, None)
    return result


def _apply_to_records(actual: Mapping[bytes, bytes], p: Plan) -> PeerTable:
    records = dict(actual)
    if isinstance(p.add, RecordPeers):
        records.update(zip(p.add.keys, p.add.records, strict=True))  # the very records
    else:
        for peer in p.add:
            records[peer.public_key] = peer_record(peer.routes, peer.preshared_key)
    for u in p.update:
        old = records[u.public_key]
        routes = record_routes(old) if u.allowed_ips is None else u.allowed_ips.packed
        psk = u.preshared_key if u.change_preshared_key else record_preshared_key(old)
        records[u.public_key] = peer_record(routes, psk)
    for key in p.remove:
        records.pop(key, None)
    return PeerTable.of_records(records)


def share_equal(held: Mapping[bytes, Peer], desired: Mapping[bytes, Peer]) -> Mapping[bytes, Peer]:
    """``held`` with each peer equal to the desired one of its key replaced by that very object.

    What an interface holds is, peer for peer, mostly what the feed wants: after
    a read-back both are equal copies, after a new snapshot the held peers are
    the previous snapshot's. Holding the desired objects (key included) instead
    keeps one copy of each peer alive, not two. ``desired`` itself comes back
    when the two hold equal peers under the same keys (the steady state: one
    mapping held, not two), and ``held`` itself when nothing is to be shared.
    With a :class:`PeerTable` desired the result is always a table, whose
    peers equal to the desired ones keep the desired records.
    """
    if held is desired:
        return desired
    if isinstance(desired, PeerTable):
        return _share_records(held, desired)
    get = desired.get
    if len(held) == len(desired):
        for key, have in held.items():
            want = get(key)
            if want is not have and (
                want is None
                or want.routes != have.routes
                or want.preshared_key != have.preshared_key
            ):
                break
        else:
            return desired
    # Comparisons inline: this runs over every peer after each read-back.
    for key, have in held.items():
        want = get(key)
        if (
            want is not None
            and want is not have
            and want.routes == have.routes
            and want.preshared_key == have.preshared_key
        ):
            break
    else:
        return held
    # A new mapping, in the same order, built whole (a copy edited in place
    # would keep the held key objects, or grow to twice its size).
    out: dict[bytes, Peer] = {}
    for key, have in held.items():
        want = get(key)
        if (
            want is not None
            and want is not have
            and want.routes == have.routes
            and want.preshared_key == have.preshared_key
        ):
            out[want.public_key] = want
        else:
            out[key] = have
    return out


def _share_records(held: Mapping[bytes, Peer], desired: PeerTable) -> PeerTable:
    """:func:`share_equal` with a :class:`PeerTable` desired: a table, sharing its records."""
    get = desired.records.get
    if len(held) == len(desired) and all(get(k) == record for k, record in _records(held)):
        return desired
    shared: dict[bytes, bytes] = {}
    for key, record in _records(held):
        theirs = get(key)
        shared[key] = theirs if theirs is not None and theirs == record else record
    return PeerTable.of_records(shared)


def _records(peers: Mapping[bytes, Peer]) -> Iterable[tuple[bytes, bytes]]:
    """Each key of ``peers`` with its peer's record, made as the iteration reaches it."""
    if isinstance(peers, PeerTable):
        return peers.records.items()
    return ((key, peer_record(p.routes, p.preshared_key)) for key, p in peers.items())


def _record_getter(peers: Mapping[bytes, Peer]) -> Callable[[bytes], bytes | None]:
    """A lookup of the record of the peer of a key in ``peers`` (a read-back's), or None."""
    get = peers.get

    def record(key: bytes) -> bytes | None:
        peer = get(key)
        return None if peer is None else peer_record(peer.routes, peer.preshared_key)

    return record
