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
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from nodeagent.core.model import (
    KEY_LEN,
    AllowedIPs,
    Peer,
    parse_key,
    parse_packed_ip,
    route_entries,
)
from nodeagent.core.names import is_interface_name
from nodeagent.feed.document import FeedError, parse_time

__all__ = ["PEER_KEYS", "interface_name", "parse_peer", "parse_peers"]

PEER_KEYS = frozenset({"public_key", "allowed_ips", "preshared_key", "expires_at"})


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
    where: str, field: str, items: list[Any], *, consume: bool = False
) -> tuple[dict[bytes, Peer], dict[bytes, datetime]]:
    """The peers of the list ``where.field`` by public key, in the list's order, and their expiries.

    No two may share a public key or an allowed IP (the kernel would silently
    move the address to the later peer). ``consume`` empties ``items`` as it is
    read, so a large decoded document shrinks while the result grows instead of
    being held twice at the peak.

    Read in passes, so that the values that stay are allocated together and
    the peak holds the decoded document or the result, not both with the
    checks' tables. The first validates every item into one flat buffer (key,
    preshared key, routes), and all it allocates on the way is freed; the
    second builds the ``Peer`` values from that buffer alone, refusing a key
    seen before; the third looks for a route on two peers. Built while the
    items were read, the peers landed among the decoded document's objects,
    and once those were freed, the allocator could not return the pages they
    were scattered over: 18 MB more resident at 100,000 peers. A document
    with several problems is refused for a malformed field first, then for a
    key twice, then for a route twice.
    """
    flat = bytearray()  # per peer: its key, its preshared key if any, its routes
    route_lengths = array("I")  # bytes of routes a peer: a few, or many thousands
    with_psk = bytearray()  # per peer: 1 if it has a preshared key
    expiring: dict[int, datetime] = {}  # by position in the list
    for i in range(len(items)):
        item = items[i]
        if consume:
            items[i] = None
        public_key, psk, routes, expiry = _peer_fields(f"{where}.{field}[{i}]", item)
        flat += public_key
        if psk is not None:
            flat += psk
        packed = _routes(routes).packed
        flat += packed
        with_psk.append(psk is not None)
        route_lengths.append(len(packed))
        if expiry is not None:
            expiring[i] = expiry
    peers = _build(f"{where}.{field}", bytes(flat), with_psk, route_lengths)
    _check_routes(where, field, peers.values())
    keys = list(peers) if expiring else []
    return peers, {keys[i]: expiry for i, expiry in expiring.items()}


def _build(
    where: str, flat: bytes, with_psk: bytearray, route_lengths: array[int]
) -> dict[bytes, Peer]:
    """The peers that :func:`parse_peers` laid out in ``flat``, each key once."""
    peers: dict[bytes, Peer] = {}
    routes_of = AllowedIPs.canonical
    pos = 0
    for i, (psk_follows, n) in enumerate(zip(with_psk, route_lengths, strict=True)):
        end = pos + KEY_LEN
        public_key = flat[pos:end]
        if public_key in peers:
            raise FeedError(f"{where}[{i}].public_key: duplicate public key")
        psk = None
        if psk_follows:
            psk = flat[end : end + KEY_LEN]
            end += KEY_LEN
        pos = end + n
        peers[public_key] = Peer(public_key, routes_of(flat[end:pos]), psk)
    return peers


def _check_routes(where: str, field: str, peers: Iterable[Peer]) -> None:
    """FeedError if two of ``peers`` (a list's, in its order) route the same address."""
    owner: dict[bytes, int] = {}  # each route, packed: the first peer routing it
    for i, peer in enumerate(peers):
        for entry in route_entries(peer.routes):
            first = owner.setdefault(entry, i)
            if first != i:
                raise FeedError(
                    f"{where}.{field}[{i}].allowed_ips: an allowed IP of {field}[{first}] again"
                )
