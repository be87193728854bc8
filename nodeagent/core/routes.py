"""A peer's allowed IPs: parsed, and packed into ``bytes`` as a million peers need.

Pure. A route is packed as address length, prefix length, address; a peer's
routes as those packings sorted, each once (``AllowedIPs.packed``), so equal
sets are equal bytes. No type here prints an address in its ``repr``.
"""

from __future__ import annotations

import socket
from collections.abc import Collection, Iterable, Iterator
from typing import NamedTuple


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


def packed_routes(entries: list[bytes]) -> bytes:
    """Routes already packed (a decoder's), in any order, maybe repeated, as
    ``AllowedIPs.packed`` holds them: sorted, each once (``b""``: none)."""
    return entries[0] if len(entries) == 1 else b"".join(sorted(set(entries)))


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
        self.packed = packed_routes(entries)
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
