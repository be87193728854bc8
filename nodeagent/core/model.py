"""Pure value types shared by every part of the agent.

Keys are raw 32-byte ``bytes``. No type here prints a key or an address in its
``repr``: a value that ends up in a log line or an exception text by mistake
must not leak what the provider promised never to record.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field
from datetime import datetime
from typing import overload

from nodeagent.core.routes import AllowedIP, AllowedIPs

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

    @classmethod
    def of_routes(cls, public_key: bytes, routes: bytes, preshared_key: bytes | None) -> Peer:
        """The peer of ``routes`` already packed as ``AllowedIPs.packed`` (canonical)."""
        self = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(self, "public_key", public_key)
        setattr_(self, "routes", routes)
        setattr_(self, "preshared_key", preshared_key)
        return self

    @property
    def allowed_ips(self) -> AllowedIPs:
        return AllowedIPs.canonical(self.routes)

    def __repr__(self) -> str:
        psk = ", psk" if self.preshared_key else ""
        return f"Peer(<redacted>, {len(self.allowed_ips)} allowed ips{psk})"


def peer_record(routes: bytes, preshared_key: bytes | None) -> bytes:
    """A peer's preshared key and routes as one :class:`PeerTable` record.

    One flag byte (1: a preshared key follows), the preshared key if any, then
    the routes packed as ``AllowedIPs.packed``. Equal records are equal peers
    (under the same key).
    """
    if preshared_key is None:
        return b"\x00" + routes
    return b"\x01" + preshared_key + routes


def record_routes(record: bytes) -> bytes:
    """The packed routes of a :func:`peer_record`."""
    return record[1 + KEY_LEN :] if record[0] else record[1:]


def record_preshared_key(record: bytes) -> bytes | None:
    """The preshared key of a :func:`peer_record`, if it has one."""
    return record[1 : 1 + KEY_LEN] if record[0] else None


def peer_of_record(public_key: bytes, record: bytes) -> Peer:
    """The ``Peer`` a :func:`peer_record` stands for."""
    if record[0]:
        return Peer.of_routes(public_key, record[1 + KEY_LEN :], record[1 : 1 + KEY_LEN])
    return Peer.of_routes(public_key, record[1:], None)


class PeerTable(Mapping[bytes, Peer]):
    """Peers by public key, held as one ``bytes`` record each: no ``Peer`` stands around them.

    A million peers are held at once, in the feed's state and as what each
    interface holds. A ``dict`` of ``Peer`` values took about 280 bytes a peer
    (the key, the ``Peer``, its routes, its preshared key, the dict's slot);
    this takes about 200: the key, one record (:func:`peer_record`) and the
    slot. A ``Peer`` is made when one is asked for, so ``table[key] is
    table[key]`` does not hold; compare peers with ``==``. ``records`` maps
    each key to its record; records of unchanged peers are shared between the
    tables of successive states, and a table is never modified once made.
    """

    __slots__ = ("records",)
    records: dict[bytes, bytes]

    def __init__(self, peers: Iterable[Peer] = ()) -> None:
        self.records = {p.public_key: peer_record(p.routes, p.preshared_key) for p in peers}

    @classmethod
    def of_records(cls, records: dict[bytes, bytes]) -> PeerTable:
        """The table of ``records`` (key to :func:`peer_record`), which it takes over."""
        self = object.__new__(cls)
        self.records = records
        return self

    def __getitem__(self, key: bytes) -> Peer:
        return peer_of_record(key, self.records[key])

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __contains__(self, key: object) -> bool:
        return key in self.records

    def items(self) -> ItemsView[bytes, Peer]:
        return _TableItems(self)

    def values(self) -> ValuesView[Peer]:
        return _TableValues(self)

    def without(self, keys: Iterable[bytes]) -> PeerTable:
        """This table less the peers of ``keys`` (a new table; keys it lacks are ignored)."""
        records = dict(self.records)
        for key in keys:
            records.pop(key, None)
        return PeerTable.of_records(records)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PeerTable):
            return self.records == other.records
        return Mapping.__eq__(self, other)

    __hash__ = None  # type: ignore[assignment]  # a mapping: equal by content

    def __repr__(self) -> str:
        return f"PeerTable(<{len(self.records)} peers>)"


class _TableItems(ItemsView[bytes, Peer]):
    """A table's items, each ``Peer`` made from its record as the iteration reaches it."""

    def __init__(self, table: PeerTable) -> None:
        super().__init__(table)
        self._records = table.records

    def __iter__(self) -> Iterator[tuple[bytes, Peer]]:
        for key, record in self._records.items():
            yield key, peer_of_record(key, record)


class _TableValues(ValuesView[Peer]):
    def __init__(self, table: PeerTable) -> None:
        super().__init__(table)
        self._records = table.records

    def __iter__(self) -> Iterator[Peer]:
        for key, record in self._records.items():
            yield peer_of_record(key, record)


class RecordPeers(Sequence[Peer]):
    """Peers as keys and :func:`peer_record` records, each ``Peer`` made as it is reached.

    A plan's additions from a :class:`PeerTable`: a first pass adds every
    peer, and a ``Peer`` for each of a million, all held until the plan was
    sent, took 140 MB more than the table itself. Here the plan holds two
    lists of references to the table's own keys and records; the encoders
    make each ``Peer`` as they reach it and drop it, and ``apply_to`` takes
    the records as they are.
    """

    __slots__ = ("keys", "records")

    def __init__(self, keys: list[bytes], records: list[bytes]) -> None:
        self.keys = keys
        self.records = records

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, i: int) -> Peer: ...
    @overload
    def __getitem__(self, i: slice) -> RecordPeers: ...
    def __getitem__(self, i: int | slice) -> Peer | RecordPeers:
        if isinstance(i, slice):
            return RecordPeers(self.keys[i], self.records[i])
        return peer_of_record(self.keys[i], self.records[i])

    def __iter__(self) -> Iterator[Peer]:
        return map(peer_of_record, self.keys, self.records)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RecordPeers):
            return self.keys == other.keys and self.records == other.records
        if isinstance(other, tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"RecordPeers(<{len(self.keys)} peers>)"


def added_parts(add: Sequence[Peer]) -> Iterator[tuple[bytes, bytes | None, bytes]]:
    """Each peer's key, preshared key and packed routes (of ``RecordPeers``: no Peer made)."""
    if isinstance(add, RecordPeers):
        psks, routes = map(record_preshared_key, add.records), map(record_routes, add.records)
        return zip(add.keys, psks, routes, strict=True)
    return ((p.public_key, p.preshared_key, p.routes) for p in add)


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

    add: Sequence[Peer] = ()  # a tuple, or RecordPeers from a PeerTable
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

        Without expiry times, or a :class:`PeerTable` none of whose peers has
        expired, this is ``peers`` itself, not a copy: the reconciler may then
        hold that very mapping as the interface's state (one table for a
        million peers, not two). Never modify it.
        """
        if not self.expires:
            return self.peers
        if isinstance(self.peers, PeerTable):
            expired = [key for key, t in self.expires.items() if t <= now]
            return self.peers.without(expired) if expired else self.peers
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
