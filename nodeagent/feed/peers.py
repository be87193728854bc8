"""The WireGuard part of a feed document, validated alike in a snapshot and a delta.

``interface_name`` checks an interface key (the rules of ``core.names``);
``parse_peer`` one peer object; ``parse_peers`` a list of them, which across
the list must hold no public key twice and no allowed IP on two peers. A
snapshot's ``peers`` and a delta's ``upsert`` are both read by
``parse_peers``. Errors name positions (``wireguard.wg0.upsert[3].allowed_ips``),
never keys or addresses.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nodeagent.core.model import AllowedIPs, Peer, parse_key, parse_packed_ip
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
    ips = AllowedIPs.from_packed(routes) if routes else AllowedIPs()
    return Peer(public_key, ips, psk), expires


def parse_peers(
    where: str, field: str, items: list[Any], *, consume: bool = False
) -> tuple[dict[bytes, Peer], dict[bytes, datetime]]:
    """The peers of the list ``where.field`` by public key, in the list's order, and their expiries.

    No two may share a public key or an allowed IP (the kernel would silently
    move the address to the later peer). ``consume`` empties ``items`` as it is
    read, so a large decoded document shrinks while the result grows instead of
    being held twice at the peak.
    """
    peers: dict[bytes, Peer] = {}
    expires: dict[bytes, datetime] = {}
    owner: dict[bytes, int] = {}  # each route, packed: the first peer routing it
    for i in range(len(items)):
        item = items[i]
        if consume:
            items[i] = None
        at = f"{where}.{field}[{i}]"
        peer, expiry = parse_peer(at, item)
        if peer.public_key in peers:
            raise FeedError(f"{at}.public_key: duplicate public key")
        for entry in peer.allowed_ips.entries():
            first = owner.setdefault(entry, i)
            if first != i:
                raise FeedError(f"{at}.allowed_ips: an allowed IP of {field}[{first}] again")
        peers[peer.public_key] = peer
        if expiry is not None:
            expires[peer.public_key] = expiry
    return peers, expires
