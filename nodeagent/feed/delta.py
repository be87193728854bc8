"""Feed deltas: parse and validate a delta document, apply it to a ``DesiredState``.

A delta (docs/feed.md) has ``"full": false``, ``"since"`` (the version
it applies to), a new ``"version"``, and per interface ``"upsert"`` (peers, in
the snapshot's peer format) and ``"remove"`` (public keys); for OpenVPN
``"upsert"`` (users) and ``"remove"`` (usernames).

Pure and all-or-nothing: ``apply_delta`` either returns a complete new state
that satisfies every rule a full snapshot must satisfy (no duplicate allowed IP
across the interface's peers, valid keys and times, ...) or raises
``FeedError`` and the caller keeps the old one. Error messages name positions
(``wireguard.wg0.upsert[3].allowed_ips``), never values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from nodeagent.core.model import (
    DesiredInterface,
    DesiredState,
    Peer,
    PeerTable,
    User,
    parse_key,
    peer_record,
    record_routes,
)
from nodeagent.core.routes import route_entries, routes_share
from nodeagent.feed.document import FeedError, decode_json, document_version
from nodeagent.feed.peers import interface_name, parse_peers, peer_item
from nodeagent.feed.snapshot import USERNAME, parse_users, snapshot_from_doc

__all__ = [
    "Applied",
    "Delta",
    "DeltaMismatch",
    "InterfaceDelta",
    "apply_delta",
    "apply_document",
    "parse_delta",
]

_DELTA_KEYS = frozenset({"version", "full", "since", "wireguard", "openvpn"})
_CHANGE_KEYS = frozenset({"upsert", "remove"})


class DeltaMismatch(FeedError):
    """A valid delta that does not apply to the state at hand: fetch a full snapshot."""


@dataclass(frozen=True, slots=True)
class InterfaceDelta:
    """Changes to one interface: peers to add or replace (with expiry), keys to remove."""

    upsert: tuple[tuple[Peer, datetime | None], ...] = ()
    remove: frozenset[bytes] = frozenset()

    def __repr__(self) -> str:
        return f"InterfaceDelta(upsert={len(self.upsert)}, remove={len(self.remove)})"


@dataclass(frozen=True, slots=True)
class Delta:
    """A validated delta document, not yet applied."""

    version: str
    since: str
    wireguard: Mapping[str, InterfaceDelta] = field(default_factory=dict)
    user_upsert: Mapping[str, User] = field(default_factory=dict)
    user_remove: frozenset[str] = frozenset()

    def __repr__(self) -> str:
        return (
            f"Delta(interfaces={len(self.wireguard)}, users_upsert={len(self.user_upsert)}, "
            f"users_remove={len(self.user_remove)})"
        )


def _version(doc: Mapping[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value or len(value) > 256:
        raise FeedError(f"{key}: must be a non-empty string")
    return value


def _change_object(where: str, raw: Any) -> tuple[list[Any], list[Any]]:
    if not isinstance(raw, dict):
        raise FeedError(f"{where}: must be an object of upsert and remove lists")
    if raw.keys() - _CHANGE_KEYS:
        raise FeedError(f"{where}: unknown field")
    upsert, remove = raw.get("upsert", []), raw.get("remove", [])
    if not isinstance(upsert, list):
        raise FeedError(f"{where}.upsert: must be a list")
    if not isinstance(remove, list):
        raise FeedError(f"{where}.remove: must be a list")
    return upsert, remove


def _interface_delta(name: str, raw: Any) -> InterfaceDelta:
    where = f"wireguard.{name}"
    upsert_raw, remove_raw = _change_object(where, raw)
    peers, expires = parse_peers(where, "upsert", upsert_raw)
    upsert = tuple((peer, expires.get(k)) for k, peer in peers.items())
    remove: set[bytes] = set()
    for j, text in enumerate(remove_raw):
        try:
            k = parse_key(text)
        except ValueError:
            raise FeedError(f"{where}.remove[{j}]: not 32 bytes of base64") from None
        if k in peers:
            # Both upserted and removed: the document contradicts itself.
            raise FeedError(f"{where}.remove[{j}]: also in upsert")
        if k in remove:
            raise FeedError(f"{where}.remove[{j}]: duplicate public key")
        remove.add(k)
    return InterfaceDelta(upsert, frozenset(remove))


def _users_delta(raw: Any) -> tuple[dict[str, User], frozenset[str]]:
    upsert_raw, remove_raw = _change_object("openvpn", raw)
    try:
        upsert = parse_users({"users": upsert_raw})
    except FeedError as e:
        # feed.parse_users names positions as in a snapshot; rename them to the delta's field.
        raise FeedError(str(e).replace("openvpn.users[", "openvpn.upsert[", 1)) from None
    remove: set[str] = set()
    for j, name in enumerate(remove_raw):
        if not isinstance(name, str) or not USERNAME.match(name):
            raise FeedError(f"openvpn.remove[{j}]: not a valid username")
        if name in upsert:
            raise FeedError(f"openvpn.remove[{j}]: also in upsert")
        if name in remove:
            raise FeedError(f"openvpn.remove[{j}]: duplicate username")
        remove.add(name)
    return upsert, frozenset(remove)


def delta_from_doc(doc: Any) -> Delta:
    """Validate an already-decoded delta document (the shape only, not its fit to a state).

    The FeedError of a rejected delta carries the document's version, if it had one.
    """
    try:
        return _delta(doc)
    except FeedError as e:
        raise FeedError(str(e), document_version(doc)) from None


def _delta(doc: Any) -> Delta:
    if not isinstance(doc, dict):
        raise FeedError("document must be a feed document (a JSON object)")
    if doc.get("full") is not False:
        raise FeedError("full: a delta must have full: false")
    if doc.keys() - _DELTA_KEYS:
        raise FeedError("document: unknown field")
    version, since = _version(doc, "version"), _version(doc, "since")
    wg_raw = doc.get("wireguard", {})
    if not isinstance(wg_raw, dict):
        raise FeedError("wireguard: must be an object of interfaces")
    wireguard = {interface_name(n): _interface_delta(n, raw) for n, raw in wg_raw.items()}
    user_upsert: dict[str, User] = {}
    user_remove: frozenset[str] = frozenset()
    if doc.get("openvpn") is not None:
        user_upsert, user_remove = _users_delta(doc["openvpn"])
    return Delta(version, since, wireguard, user_upsert, user_remove)


def parse_delta(data: bytes | bytearray | str) -> Delta:
    """Decode and validate a delta document; FeedError on any problem."""
    return delta_from_doc(decode_json(data, peer_item))


def _apply_interface(name: str, base: DesiredInterface, change: InterfaceDelta) -> DesiredInterface:
    where = f"wireguard.{name}"
    held = base.peers if isinstance(base.peers, PeerTable) else PeerTable(base.peers.values())
    records = dict(held.records)
    expires = dict(base.expires)
    for k in change.remove:
        # Removing a peer the state does not hold changes nothing; the result is still right.
        records.pop(k, None)
        expires.pop(k, None)
    upserted = {peer.public_key for peer, _ in change.upsert}
    new_ips: dict[bytes, int] = {}  # each upserted route, packed: the upsert routing it
    for i, (peer, _) in enumerate(change.upsert):
        for entry in peer.allowed_ips.entries():
            new_ips[entry] = i
    if new_ips:
        taken = _first_collision(records, upserted, new_ips)
        if taken is not None:
            raise FeedError(
                f"{where}.upsert[{taken}].allowed_ips: an allowed IP already routed to another peer"
            )
    for peer, expiry in change.upsert:
        key = peer.public_key
        record, old = peer_record(peer.routes, peer.preshared_key), records.get(key)
        records[key] = old if old is not None and old == record else record
        if expiry is None:
            expires.pop(key, None)
        else:
            expires[key] = expiry
    return DesiredInterface(PeerTable.of_records(records), expires)


def _first_collision(
    records: Mapping[bytes, bytes], upserted: set[bytes], new_ips: Mapping[bytes, int]
) -> int | None:
    """The first upsert routing a network that a peer staying as it was already routes.

    ``records`` are the interface's peers (``PeerTable.records``); ``new_ips``
    maps each upserted route, packed, to its upsert. This runs over every peer
    of the interface on each delta, so packed routes are compared, never
    ``AllowedIP`` values, and a small delta's routes are first looked for in
    all the records joined, in C: nearly always none is there. A hit may
    straddle two routes, or lie in a preshared key, so it is confirmed peer by
    peer.
    """
    wanted = frozenset(new_ips)
    if len(wanted) <= _JOINED_SEARCH_MAX:
        joined = b"".join(records.values())
        if not any(entry in joined for entry in wanted):
            return None
    for k, record in records.items():
        if k in upserted:
            continue
        routes = record_routes(record)
        if routes_share(routes, wanted):
            return min(new_ips[e] for e in route_entries(routes) if e in new_ips)
    return None


# Up to this many routes in a delta, each is searched for in all the records joined.
_JOINED_SEARCH_MAX = 16


def apply_delta(state: DesiredState, delta: Delta) -> DesiredState:
    """The state ``delta`` leads to from ``state``; DeltaMismatch if it is meant for another.

    ``state`` is left untouched: the caller keeps it in force when this raises.
    """
    if delta.since != state.version:
        raise DeltaMismatch("since: the delta is not meant for the current version")
    wireguard = dict(state.wireguard)
    for name, change in delta.wireguard.items():
        wireguard[name] = _apply_interface(
            name, state.wireguard.get(name, DesiredInterface()), change
        )
    users = dict(state.users)
    for username in delta.user_remove:
        users.pop(username, None)
    users.update(delta.user_upsert)
    return DesiredState(version=delta.version, wireguard=wireguard, users=users)


class Applied(NamedTuple):
    """The state a feed answer led to, and whether the answer was a full snapshot."""

    state: DesiredState
    full: bool


def apply_document(data: bytes | bytearray | str, current: DesiredState | None) -> Applied:
    """A snapshot or a delta, whichever ``data`` is, turned into the new state.

    A full snapshot replaces ``current``; a delta is applied to it (DeltaMismatch
    when there is no current state or its version is not the delta's ``since``).
    """
    doc = decode_json(data, peer_item)
    if isinstance(doc, dict) and doc.get("full") is True:
        # A full answer to a since= request: the server lost the history.
        return Applied(snapshot_from_doc(doc, current), True)
    delta = delta_from_doc(doc)
    del doc
    if current is None:
        raise DeltaMismatch("since: a delta arrived but no state is held yet")
    try:
        return Applied(apply_delta(current, delta), False)
    except DeltaMismatch:
        raise
    except FeedError as e:
        # A valid delta whose result breaks a rule (an allowed IP already routed).
        raise FeedError(str(e), delta.version) from None
