"""Pure value types shared by every part of the agent.

Keys are raw 32-byte ``bytes``. No type here prints a key or an address in its
``repr``: a value that ends up in a log line or an exception text by mistake
must not leak what the provider promised never to record.
"""

from __future__ import annotations

import base64
import binascii
import socket
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NamedTuple

KEY_LEN = 32
ZERO_KEY = bytes(KEY_LEN)


def parse_key(text: str) -> bytes:
    """Decode a WireGuard key written as base64 of 32 bytes; ValueError otherwise."""
    if not isinstance(text, str) or len(text) != 44 or not text.endswith("="):
        raise ValueError("not a base64 WireGuard key")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not a base64 WireGuard key") from None
    if len(raw) != KEY_LEN:
        raise ValueError("not a base64 WireGuard key")
    return raw


def format_key(key: bytes) -> str:
    """Base64 text of a key, as ``wg`` writes it."""
    return base64.b64encode(key).decode("ascii")


class AllowedIP(NamedTuple):
    """A network routed to a peer: packed address (4 or 16 bytes, host bits zero) and prefix."""

    address: bytes
    cidr: int

    @property
    def family(self) -> int:
        return socket.AF_INET if len(self.address) == 4 else socket.AF_INET6

    @classmethod
    def parse(cls, text: str) -> AllowedIP:
        """Parse ``10.8.0.2/32`` or ``fd00::2/128``; ValueError if host bits are set."""
        return cls(*_parse_network(text))

    def __str__(self) -> str:
        return f"{socket.inet_ntop(self.family, self.address)}/{self.cidr}"

    def __repr__(self) -> str:
        return "AllowedIP(<redacted>)"


def _parse_network(text: str) -> tuple[bytes, int]:
    """The packed address and prefix length of ``10.8.0.2/32`` or ``fd00::2/128``."""
    if not isinstance(text, str):
        raise ValueError("allowed IP is not a string")
    addr_text, slash, cidr_text = text.partition("/")
    family = socket.AF_INET6 if ":" in addr_text else socket.AF_INET
    try:
        packed = socket.inet_pton(family, addr_text)
    except (OSError, ValueError):  # ValueError: a NUL or a lone surrogate, quoted in its text
        raise ValueError("allowed IP is not an IP network") from None
    bits = len(packed) * 8
    if not slash:
        cidr = bits
    elif cidr_text.isdigit() and len(cidr_text) <= 3 and int(cidr_text) <= bits:
        cidr = int(cidr_text)
    else:
        raise ValueError("allowed IP has a bad prefix length")
    host_mask = (1 << (bits - cidr)) - 1
    if int.from_bytes(packed, "big") & host_mask:
        raise ValueError("allowed IP has host bits set")
    return packed, cidr


def parse_packed_ip(text: str) -> bytes:
    """``AllowedIP.parse(text)`` as a packed route of :class:`AllowedIPs`, without the tuple."""
    packed, cidr = _parse_network(text)
    return _HEADS[len(packed)][cidr] + packed


class AllowedIPs(Collection[AllowedIP]):
    """A peer's routes, canonical (sorted, each once), packed into one ``bytes``.

    A million peers are held at once: this takes about 110 bytes for the usual
    one or two routes, where a frozenset of ``AllowedIP`` tuples and their
    address ``bytes`` took 400-500. Each route is packed as address length,
    prefix length, address; the routes are sorted by that packing, so equal
    sets are equal bytes. Iterating yields ``AllowedIP`` values.
    """

    __slots__ = ("packed",)
    packed: bytes

    def __new__(cls, ips: Iterable[AllowedIP] = ()) -> AllowedIPs:
        if type(ips) is AllowedIPs:
            return ips
        self = object.__new__(cls)
        self.packed = b"".join(sorted({_pack(ip) for ip in ips}))
        return self

    @classmethod
    def canonical(cls, packed: bytes) -> AllowedIPs:
        """The routes packed as ``packed``, already canonical (another ``AllowedIPs``'s)."""
        self = object.__new__(cls)
        self.packed = packed
        return self

    @classmethod
    def from_packed(cls, entries: list[bytes]) -> AllowedIPs:
        """From routes already packed (a decoder's), in any order, maybe repeated.

        Each entry must be well formed: a length of 4 or 16, a prefix length
        within it, that many address bytes (the decoder has checked them).
        """
        self = object.__new__(cls)
        self.packed = entries[0] if len(entries) == 1 else b"".join(sorted(set(entries)))
        return self

    def __iter__(self) -> Iterator[AllowedIP]:
        raw = self.packed
        pos, end = 0, len(raw)
        while pos < end:
            n = raw[pos]
            yield AllowedIP(raw[pos + 2 : pos + 2 + n], raw[pos + 1])
            pos += 2 + n

    def __len__(self) -> int:
        raw = self.packed
        count = pos = 0
        while pos < len(raw):
            pos += 2 + raw[pos]
            count += 1
        return count

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, AllowedIP) and _pack(ip) in set(route_entries(self.packed))

    def entries(self) -> Iterator[bytes]:
        """Each route packed (address length, prefix length, address): cheaper than iterating."""
        return route_entries(self.packed)

    def shares(self, entries: Collection[bytes]) -> bool:
        """Whether any of ``entries`` (packed routes, as :meth:`entries` yields) is one of these."""
        return routes_share(self.packed, entries)

    def __eq__(self, other: object) -> bool:
        return type(other) is AllowedIPs and self.packed == other.packed

    def __hash__(self) -> int:
        return hash(self.packed)

    def __repr__(self) -> str:
        return f"AllowedIPs(<{len(self)} redacted>)"


def routes_share(packed: bytes, entries: Collection[bytes]) -> bool:
    """Whether any of ``entries`` (routes packed one by one) is among the routes ``packed``.

    Runs over every peer of an interface for each delta (on ``Peer.routes``, no
    ``AllowedIPs`` made), so a few wanted routes are first looked for as
    substrings, in C; a hit is confirmed entry by entry (a substring may
    straddle two routes).
    """
    if len(entries) <= 4 and not any(e in packed for e in entries):
        return False
    return not set(route_entries(packed)).isdisjoint(entries)


def route_entries(raw: bytes) -> Iterator[bytes]:
    """Each route of ``raw`` (as ``AllowedIPs.packed``), packed on its own."""
    pos = 0
    while pos < len(raw):
        n = raw[pos]
        yield raw[pos : pos + 2 + n]
        pos += 2 + n


def _pack(ip: AllowedIP) -> bytes:
    address, cidr = ip
    return _HEADS[len(address)][cidr] + address


# The two leading bytes of a packed route, by address length and prefix length.
_HEADS = {4: [bytes((4, c)) for c in range(256)], 16: [bytes((16, c)) for c in range(256)]}


def allowed_ips(ips: Iterable[AllowedIP]) -> AllowedIPs:
    """The canonical form of a set of routes: sorted, without duplicates."""
    return AllowedIPs(ips)


@dataclass(frozen=True, slots=True, init=False)
class Peer:
    """A WireGuard peer as the agent manages it: key, optional preshared key, routes.

    Endpoints, handshake times and byte counts are deliberately absent: the
    agent never needs them to reconcile and so never holds them. The routes are
    given as any iterable of ``AllowedIP`` (or an :class:`AllowedIPs`) and kept
    as ``routes``, the canonical bytes :class:`AllowedIPs` packs them into, so
    equal peers compare equal; ``allowed_ips`` gives them as ``AllowedIPs``. A
    million peers are held at once: no object stands around the bytes (48
    bytes a peer).
    """

    public_key: bytes
    routes: bytes
    preshared_key: bytes | None

    def __init__(
        self,
        public_key: bytes,
        allowed_ips: Iterable[AllowedIP] = (),
        preshared_key: bytes | None = None,
    ) -> None:
        setattr_ = object.__setattr__  # frozen: set once, here
        setattr_(self, "public_key", public_key)
        setattr_(self, "routes", AllowedIPs(allowed_ips).packed)
        setattr_(self, "preshared_key", preshared_key)

    @property
    def allowed_ips(self) -> AllowedIPs:
        return AllowedIPs.canonical(self.routes)

    def __repr__(self) -> str:
        psk = ", psk" if self.preshared_key else ""
        return f"Peer(<redacted>, {len(self.allowed_ips)} allowed ips{psk})"


@dataclass(frozen=True, slots=True)
class PeerUpdate:
    """The fields of an existing peer that differ from what is desired.

    ``allowed_ips`` is None when unchanged (otherwise the full new set, which
    replaces the old one, canonical as in ``Peer``). ``preshared_key`` is only
    meaningful when ``change_preshared_key`` is set; None then means remove the
    preshared key.
    """

    public_key: bytes
    allowed_ips: AllowedIPs | None = None
    change_preshared_key: bool = False
    preshared_key: bytes | None = None

    def __post_init__(self) -> None:
        ips = self.allowed_ips
        if ips is not None and type(ips) is not AllowedIPs:
            object.__setattr__(self, "allowed_ips", AllowedIPs(ips))

    def __repr__(self) -> str:
        return (
            f"PeerUpdate(<redacted>, allowed_ips={self.allowed_ips is not None}, "
            f"psk={self.change_preshared_key})"
        )


@dataclass(frozen=True, slots=True)
class Plan:
    """What to send to one interface to make it match the desired peers."""

    add: tuple[Peer, ...] = ()
    update: tuple[PeerUpdate, ...] = ()
    remove: tuple[bytes, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.add or self.update or self.remove)

    def counts(self) -> dict[str, int]:
        return {"added": len(self.add), "updated": len(self.update), "removed": len(self.remove)}

    def __repr__(self) -> str:
        c = self.counts()
        return f"Plan(added={c['added']}, updated={c['updated']}, removed={c['removed']})"


@dataclass(frozen=True, slots=True)
class Device:
    """What a WireGuard interface reports: its identity and its peers.

    ``digest`` is the configuration digest (see ``core.backend``) of the very
    reply these values were decoded from, when the backend computed one; it is
    not part of the device's equality.
    """

    private_key: bytes | None = None
    listen_port: int = 0
    peers: Mapping[bytes, Peer] = field(default_factory=dict)
    digest: int | None = field(default=None, compare=False)

    def __repr__(self) -> str:
        return f"Device(listen_port={self.listen_port}, peers={len(self.peers)})"


@dataclass(frozen=True, slots=True)
class InterfaceSetup:
    """How to create and configure an interface the agent owns (``create: true``)."""

    private_key: bytes
    listen_port: int
    addresses: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return f"InterfaceSetup(listen_port={self.listen_port}, addresses={len(self.addresses)})"


@dataclass(frozen=True, slots=True)
class DesiredInterface:
    """The peers the feed wants on one interface, with their optional expiry times."""

    peers: Mapping[bytes, Peer] = field(default_factory=dict)
    expires: Mapping[bytes, datetime] = field(default_factory=dict)

    def active(self, now: datetime) -> Mapping[bytes, Peer]:
        """The peers that are desired at ``now``: expired ones are left out.

        Without expiry times this is ``peers`` itself, not a copy: the
        reconciler may then hold that very mapping as the interface's state
        (one dict for a million peers, not two). Never modify it.
        """
        if not self.expires:
            return self.peers
        return {
            key: peer
            for key, peer in self.peers.items()
            if key not in self.expires or self.expires[key] > now
        }

    def next_expiry(self, now: datetime) -> datetime | None:
        future = [t for t in self.expires.values() if t > now]
        return min(future) if future else None

    def __repr__(self) -> str:
        return f"DesiredInterface(peers={len(self.peers)})"


@dataclass(frozen=True, slots=True)
class User:
    """An OpenVPN account."""

    username: str
    password_hash: str
    expires_at: datetime | None = None

    def __repr__(self) -> str:
        return "User(<redacted>)"


@dataclass(frozen=True, slots=True)
class DesiredState:
    """A validated feed document: everything the central service wants on this node."""

    version: str
    wireguard: Mapping[str, DesiredInterface] = field(default_factory=dict)
    users: Mapping[str, User] = field(default_factory=dict)

    def peer_count(self) -> int:
        return sum(len(i.peers) for i in self.wireguard.values())

    def __repr__(self) -> str:
        return (
            f"DesiredState(interfaces={len(self.wireguard)}, peers={self.peer_count()}, "
            f"users={len(self.users)})"
        )


def peers_by_key(peers: Iterable[Peer]) -> dict[bytes, Peer]:
    return {p.public_key: p for p in peers}
