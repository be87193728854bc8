"""The WireGuard part of a feed document, validated alike in a snapshot and a delta.

``interface_name`` checks an interface key (the rules of ``core.names``);
``parse_peer`` one peer object; ``parse_peers`` a list of them, which across
the list must hold no public key twice and no allowed IP on two peers. A
snapshot's ``peers`` and a delta's ``upsert`` are both read by
``parse_peers``. Errors name positions (``wireguard.wg0.upsert[3].allowed_ips``),
never keys or addresses.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from nodeagent.core.model import KEY_LEN, Peer, PeerTable, parse_key, record_routes
from nodeagent.core.names import is_interface_name
from nodeagent.core.routes import AllowedIPs, parse_packed_ip, route_entries
from nodeagent.feed.document import FeedError, parse_time

__all__ = ["PEER_KEYS", "PeerItem", "interface_name", "parse_peer", "parse_peers", "peer_item"]

PEER_KEYS = frozenset({"public_key", "allowed_ips", "preshared_key", "expires_at"})

_PSK, _EXPIRES = 1, 2  # PeerItem flags
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
# Expiries are kept as microseconds since the epoch, within what a datetime can hold in
# UTC: one written at year 1 or 9999 with an offset is moved to the nearest such
# instant, which is as far in the past or the future for any clock the agent runs by.
_FIRST = (datetime.min.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND
_LAST = (datetime.max.replace(tzinfo=UTC) - _EPOCH) // _MICROSECOND


class PeerItem(bytes):
    """One peer object, validated and packed as the JSON decoder met it (:func:`peer_item`).

    A flags byte (1: a preshared key follows the public key; 2: an expiry
    comes first), the expiry as 8 bytes of microseconds since the epoch, the
    public key, the preshared key, the routes packed as ``Peer.routes`` holds
    them. About 110 bytes a peer, where the decoded object (a dict, its key
    and address strings, a list) took about 580: a 100,000-peer snapshot's
    decoded document is 12 MB instead of 58. JSON decodes to no ``bytes``,
    so a document cannot hold one of these but through the decoder's hook.
    """

    __slots__ = ()

    def __repr__(self) -> str:  # bytes would show the keys
        return "PeerItem(<redacted>)"

    __str__ = __repr__


def interface_name(name: object) -> str:
    """A feed's interface key, if it is an interface name the agent accepts; FeedError otherwise."""
    # The name is not quoted: it comes from the document.
    if not isinstance(name, str) or not is_interface_name(name):
        raise FeedError("wireguard: a key is not a valid interface name")
    return name


def parse_peer(where: str, raw: Any) -> tuple[Peer, datetime | None]:
    """One peer object at ``where``, and its expiry if it has one."""
    public_key, psk, routes, expires = _peer_fields(where, raw)
    return Peer(public_key, _routes(routes), psk), expires


def _routes(entries: list[bytes]) -> AllowedIPs:
    return AllowedIPs.from_packed(entries) if entries else AllowedIPs()


def peer_item(obj: dict[str, Any]) -> dict[str, Any] | PeerItem:
    """The JSON decoder's hook: a valid peer object as a :class:`PeerItem`, any other as it is.

    Called for every object as the decoder builds it, so a snapshot's peers
    are never held as objects all at once. An object with a ``public_key``
    that is not a valid peer is kept, to be refused where its position is
    known; one in a place that wants no peer is refused there, being no
    ``dict``. Being Python, each call also lets the interpreter switch
    threads: decoding a large snapshot in a worker thread does not hold the
    event loop (OpenVPN logins, ``/metrics``, the probes) for its whole
    decode, as one C call would.
    """
    if "public_key" not in obj:
        return obj
    try:
        return _item("", obj)
    except FeedError:
        return obj


def _item(where: str, raw: Any) -> PeerItem:
    """The peer object at ``where`` as a :class:`PeerItem`; FeedError if it is not a valid one."""
    if type(raw) is PeerItem:
        return raw
    public_key, psk, routes, expires = _peer_fields(where, raw)
    head = bytearray(1)
    if expires is not None:
        head[0] |= _EXPIRES
        at = min(max((expires - _EPOCH) // _MICROSECOND, _FIRST), _LAST)
        head += at.to_bytes(8, "little", signed=True)
    head += public_key
    if psk is not None:
        head[0] |= _PSK
        head += psk
    return PeerItem(head + _routes(routes).packed)


def _peer_fields(where: str, raw: Any) -> tuple[bytes, bytes | None, list[bytes], datetime | None]:
    """One peer object's public key, preshared key, routes (each packed) and expiry."""
    if not isinstance(raw, dict):
        raise FeedError(f"{where}: must be an object")
    unknown = raw.keys() - PEER_KEYS
    if unknown:
        # The field's name is not quoted: a rejected document is untrusted text.
        raise FeedError(f"{where}: unknown field")
    try:
        public_key = parse_key(raw.get("public_key"))  # type: ignore[arg-type]
    except ValueError:
        raise FeedError(f"{where}.public_key: not 32 bytes of base64") from None
    psk: bytes | None = None
    if raw.get("preshared_key") is not None:
        try:
            psk = parse_key(raw["preshared_key"])
        except ValueError:
            raise FeedError(f"{where}.preshared_key: not 32 bytes of base64") from None
    ips_raw = raw.get("allowed_ips", [])
    if not isinstance(ips_raw, list):
        raise FeedError(f"{where}.allowed_ips: must be a list")
    # Packed straight from the text: no AllowedIP value per route (a million peers are parsed).
    routes: list[bytes] = []
    for j, text in enumerate(ips_raw):
        try:
            routes.append(parse_packed_ip(text))
        except ValueError as e:
            raise FeedError(f"{where}.allowed_ips[{j}]: {e}") from None
    expires: datetime | None = None
    if raw.get("expires_at") is not None:
        try:
            expires = parse_time(raw["expires_at"])
        except ValueError:
            raise FeedError(f"{where}.expires_at: not an RFC 3339 time with a zone") from None
    return public_key, psk, routes, expires


def parse_peers(
    where: str,
    field: str,
    items: list[Any],
    *,
    consume: bool = False,
    reuse: Mapping[bytes, Peer] | None = None,
) -> tuple[PeerTable, dict[bytes, datetime]]:
    """The peers of the list ``where.field`` by public key, in the list's order, and their expiries.

    No two may share a public key or an allowed IP (the kernel would silently
    move the address to the later peer). An item is a peer object or the
    :class:`PeerItem` the decoder made of it. ``consume`` empties ``items`` as
    it is read, so a large decoded document shrinks while the result grows
    instead of being held twice at the peak. A peer equal to the one of
    ``reuse`` under its key (the state this list replaces, a
    :class:`PeerTable`) keeps that very record: a new snapshot allocates only
    the keys and what changed.

    Read in passes, so that the values that stay are allocated together and
    the peak holds the decoded document or the result, not both with the
    checks' tables. The first validates every item into one flat buffer (per
    peer its key, then its record, as ``core.model.peer_record`` packs it),
    and all it allocates on the way is freed; the second slices the table
    from that buffer alone, refusing a key seen before; the third looks for a
    route on two peers. Built while the items were read, the peers landed
    among the decoded document's objects, and once those were freed, the
    allocator could not return the pages they were scattered over: 18 MB
    more resident at 100,000 peers. A document with several problems is
    refused for a malformed field first, then for a key twice, then for a
    route twice.
    """
    flat = bytearray()  # per peer: its key, then its record (flag, preshared key, routes)
    record_lengths = array("I")  # a few bytes of routes, or many thousands
    expiring: dict[int, datetime] = {}  # by position in the list
    for i in range(len(items)):
        item = _item(f"{where}.{field}[{i}]", items[i])
        if consume:
            items[i] = None
        flags = item[0]
        start = 1
        if flags & _EXPIRES:
            start = 9
            expiring[i] = _EPOCH + int.from_bytes(item[1:9], "little", signed=True) * _MICROSECOND
        with memoryview(item) as body:
            flat += body[start : start + KEY_LEN]
            flat.append(flags & _PSK)
            flat += body[start + KEY_LEN :]
        record_lengths.append(len(item) - start - KEY_LEN + 1)
    peers = _build(f"{where}.{field}", bytes(flat), record_lengths, reuse)
    _check_routes(where, field, peers.records.values())
    keys = list(peers) if expiring else []
    return peers, {keys[i]: expiry for i, expiry in expiring.items()}


def _build(
    where: str, flat: bytes, record_lengths: array[int], reuse: Mapping[bytes, Peer] | None
) -> PeerTable:
    """The table that :func:`parse_peers` laid out in ``flat``, each key once."""
    records: dict[bytes, bytes] = {}
    held = reuse.records if isinstance(reuse, PeerTable) else {}
    pos = 0
    for i, n in enumerate(record_lengths):
        end = pos + KEY_LEN
        public_key = flat[pos:end]
        if public_key in records:
            raise FeedError(f"{where}[{i}].public_key: duplicate public key")
        pos = end + n
        record = flat[end:pos]
        old = held.get(public_key)
        records[public_key] = old if old is not None and old == record else record
    return PeerTable.of_records(records)


def _check_routes(where: str, field: str, records: Iterable[bytes]) -> None:
    """FeedError if two peers of ``records`` (a list's, in its order) route the same address."""
    owner: dict[bytes, int] = {}  # each route, packed: the first peer routing it
    for i, record in enumerate(records):
        for entry in route_entries(record_routes(record)):
            first = owner.setdefault(entry, i)
            if first != i:
                raise FeedError(
                    f"{where}.{field}[{i}].allowed_ips: an allowed IP of {field}[{first}] again"
                )
