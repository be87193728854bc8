"""WireGuard generic-netlink messages to and from bytes. Pure: no sockets, no pyroute2.

The kernel shell (``netlink.py``) sends what this module encodes and feeds it
what the kernel answers. Encoding and decoding are done with ``struct`` on flat
buffers because the generic NLA machinery of pyroute2 costs about 100 µs a
peer, which for 20,000 peers is slower than ``wg`` itself by an order of
magnitude.

Wire layout (``include/uapi/linux/wireguard.h``): a netlink header, a genl
header (command, version 1), then attributes. Peers and allowed IPs are nested
lists whose elements carry type 0, as wireguard-tools writes them. Integers are
in host byte order, addresses in network byte order.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import NamedTuple

from nodeagent.core.model import KEY_LEN, ZERO_KEY, AllowedIP, Device, Peer, Plan
from nodeagent.core.names import interface_name_problem

# Netlink.
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLA_F_NESTED = 0x8000
_NLA_TYPE_MASK = 0x3FFF  # drops NLA_F_NESTED and NLA_F_NET_BYTEORDER

# Generic netlink family "wireguard", version 1.
WG_GENL_VERSION = 1
WG_CMD_GET_DEVICE = 0
WG_CMD_SET_DEVICE = 1

WGDEVICE_A_IFINDEX = 1
WGDEVICE_A_IFNAME = 2
WGDEVICE_A_PRIVATE_KEY = 3
WGDEVICE_A_PUBLIC_KEY = 4
WGDEVICE_A_FLAGS = 5
WGDEVICE_A_LISTEN_PORT = 6
WGDEVICE_A_FWMARK = 7
WGDEVICE_A_PEERS = 8

WGPEER_A_PUBLIC_KEY = 1
WGPEER_A_PRESHARED_KEY = 2
WGPEER_A_FLAGS = 3
WGPEER_A_ENDPOINT = 4
WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL = 5
WGPEER_A_LAST_HANDSHAKE_TIME = 6
WGPEER_A_RX_BYTES = 7
WGPEER_A_TX_BYTES = 8
WGPEER_A_ALLOWEDIPS = 9
WGPEER_A_PROTOCOL_VERSION = 10

WGPEER_F_REMOVE_ME = 1
WGPEER_F_REPLACE_ALLOWEDIPS = 2
WGPEER_F_UPDATE_ONLY = 4

WGALLOWEDIP_A_FAMILY = 1
WGALLOWEDIP_A_IPADDR = 2
WGALLOWEDIP_A_CIDR_MASK = 3

NLMSG_HDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
GENL_HDR = struct.Struct("=BBH")  # command, version, reserved
NLA_HDR = struct.Struct("=HH")  # length, type
_U16 = struct.Struct("=H")
_I32 = struct.Struct("=i")
_HDRS = NLMSG_HDR.size + GENL_HDR.size

# One allowed IP as a whole nest element: CIDR_MASK (u8), FAMILY (u16), IPADDR.
_AIP4 = struct.Struct("=HH HHB3x HHH2x HH4s")
_AIP6 = struct.Struct("=HH HHB3x HHH2x HH16s")
_U32 = struct.Struct("=I")
_KEY_ATTR = struct.Struct("=HH32s")
_NEST_HDR_LEN = 4
# What the kernel's GET_DEVICE puts after a peer's keys, in this order: last
# handshake (timespec64), keepalive (u16), tx and rx bytes (u64), protocol
# version (u32). The decoder skips it in one step when the headers match; the
# dump encoder (tests) writes it zeroed.
_KERNEL_STATS = (
    NLA_HDR.pack(20, WGPEER_A_LAST_HANDSHAKE_TIME) + bytes(16)
    + NLA_HDR.pack(6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL) + bytes(4)
    + NLA_HDR.pack(12, WGPEER_A_TX_BYTES) + bytes(8)
    + NLA_HDR.pack(12, WGPEER_A_RX_BYTES) + bytes(8)
    + NLA_HDR.pack(8, WGPEER_A_PROTOCOL_VERSION) + struct.pack("=I", 1)
)  # fmt: skip
_PEER_FAST = struct.Struct("=HH32s HH32s HH16x HH4x HH8x HH8x HH4x")
_PEER_FAST_HDRS = (
    20, WGPEER_A_LAST_HANDSHAKE_TIME, 6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    12, WGPEER_A_TX_BYTES, 12, WGPEER_A_RX_BYTES, 8, WGPEER_A_PROTOCOL_VERSION,
)  # fmt: skip
_KEY_ATTR_LEN = _KEY_ATTR.size
_FLAGS_ATTR_LEN = 8

# An NLA length is a u16, so the WGDEVICE_A_PEERS nest of one message must stay
# below 64 KiB; bounding the whole message bounds the nest.
MAX_MESSAGE = 65532
DEFAULT_MESSAGE = 32 * 1024


class DecodeError(ValueError):
    """A message from the kernel is malformed (never quotes its content)."""


class PeerOp(NamedTuple):
    """One peer element of a SET_DEVICE request, before it is packed into messages."""

    public_key: bytes
    flags: int
    preshared_key: bytes | None  # None: leave it; ZERO_KEY: remove it
    allowed_ips: Sequence[AllowedIP] | None  # None: no ALLOWEDIPS attribute at all


def _align(n: int) -> int:
    return (n + 3) & ~3


def _attr(atype: int, payload: bytes) -> bytes:
    n = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(n, atype) + payload + bytes(_align(n) - n)


def _ifname_attr(ifname: str) -> bytes:
    # The agent's own rules (core.names): ASCII, so one character is one byte
    # and the name with its NUL fits the kernel's IFNAMSIZ.
    problem = interface_name_problem(ifname)
    if problem is not None:
        raise ValueError(f"interface name {problem}")
    return _attr(WGDEVICE_A_IFNAME, ifname.encode("ascii") + b"\0")


def _sorted_ips(ips: Collection[AllowedIP]) -> list[AllowedIP]:
    # Deterministic bytes for the same plan; tests compare them. Plain tuple
    # order (address bytes, then prefix): a key function costs 5x as much.
    return sorted(ips) if len(ips) > 1 else list(ips)


def _pack_ip_kernel(ip: AllowedIP) -> bytes:
    # The attribute order the kernel itself writes (CIDR_MASK, FAMILY, IPADDR);
    # the kernel accepts any order, and the decoder's fast path expects this one.
    if len(ip.address) == 4:
        return _AIP4.pack(
            28, NLA_F_NESTED, 5, WGALLOWEDIP_A_CIDR_MASK, ip.cidr,
            6, WGALLOWEDIP_A_FAMILY, socket.AF_INET, 8, WGALLOWEDIP_A_IPADDR, ip.address,
        )  # fmt: skip
    return _AIP6.pack(
        40, NLA_F_NESTED, 5, WGALLOWEDIP_A_CIDR_MASK, ip.cidr,
        6, WGALLOWEDIP_A_FAMILY, socket.AF_INET6, 20, WGALLOWEDIP_A_IPADDR, ip.address,
    )  # fmt: skip


def plan_ops(plan: Plan) -> list[PeerOp]:
    """:func:`iter_plan_ops` as a list."""
    return list(iter_plan_ops(plan))


def iter_plan_ops(plan: Plan) -> Iterator[PeerOp]:
    """The peer elements a plan turns into: additions, then updates, then removals.

    Removals go last so that an allowed IP moving from a removed peer to a new
    one is never unrouted in between. Additions carry REPLACE_ALLOWEDIPS so that
    adding a peer that exists after all (drift) still yields exactly the
    desired routes.
    """
    for p in plan.add:
        yield PeerOp(
            p.public_key, WGPEER_F_REPLACE_ALLOWEDIPS, p.preshared_key, _sorted_ips(p.allowed_ips)
        )
    for u in plan.update:
        flags = WGPEER_F_UPDATE_ONLY
        ips: list[AllowedIP] | None = None
        if u.allowed_ips is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
            ips = _sorted_ips(u.allowed_ips)
        psk = None
        if u.change_preshared_key:
            psk = u.preshared_key if u.preshared_key is not None else ZERO_KEY
        yield PeerOp(u.public_key, flags, psk, ips)
    for k in plan.remove:
        yield PeerOp(k, WGPEER_F_REMOVE_ME, None, None)


def _peer_chunk(
    key: bytes,
    flags: int | None,
    psk: bytes | None,
    ips: Sequence[bytes] | None,
    extra: bytes = b"",
) -> bytes:
    """One peer nest element, given its allowed IPs already packed.

    ``flags`` None leaves out the flags attribute (as the kernel's dump does);
    ``extra`` is appended before the allowed IPs (the dump's statistics).
    """
    if len(key) != KEY_LEN or (psk is not None and len(psk) != KEY_LEN):
        raise ValueError("key is not 32 bytes")
    parts: list[bytes] = []
    n = _NEST_HDR_LEN + _KEY_ATTR_LEN
    if flags is not None:
        parts.append(NLA_HDR.pack(_FLAGS_ATTR_LEN, WGPEER_A_FLAGS) + _U32.pack(flags))
        n += _FLAGS_ATTR_LEN
    if psk is not None:
        parts.append(_KEY_ATTR.pack(_KEY_ATTR_LEN, WGPEER_A_PRESHARED_KEY, psk))
        n += _KEY_ATTR_LEN
    if extra:
        parts.append(extra)
        n += len(extra)
    if ips is not None:
        body = b"".join(ips)
        parts.append(NLA_HDR.pack(_NEST_HDR_LEN + len(body), NLA_F_NESTED | WGPEER_A_ALLOWEDIPS))
        parts.append(body)
        n += _NEST_HDR_LEN + len(body)
    head = NLA_HDR.pack(n, NLA_F_NESTED) + _KEY_ATTR.pack(_KEY_ATTR_LEN, WGPEER_A_PUBLIC_KEY, key)
    return head + b"".join(parts)


def _peer_chunks(op: PeerOp, room: int, *, dump: bool = False) -> Iterator[bytes]:
    """A peer as one element, or split into elements of at most ``room`` bytes.

    A continuation element repeats the public key with no REPLACE_ALLOWEDIPS
    (and no preshared key), so the kernel appends its allowed IPs to those
    already sent, as wireguard-tools does. ``dump`` shapes the elements as the
    kernel's GET_DEVICE answer does instead (statistics, no flags).
    """
    packed = None if op.allowed_ips is None else [_pack_ip_kernel(ip) for ip in op.allowed_ips]
    flags: int | None = None if dump else op.flags
    psk, extra = op.preshared_key, _KERNEL_STATS if dump else b""
    whole = _peer_chunk(op.public_key, flags, psk, packed, extra)
    if len(whole) <= room or packed is None:
        yield whole
        return
    i = 0
    while True:
        used = len(_peer_chunk(op.public_key, flags, psk, [], extra))
        j = i
        while j < len(packed) and used + len(packed[j]) <= room:
            used += len(packed[j])
            j += 1
        if j == i and i < len(packed):
            raise ValueError("message size too small for one allowed IP")
        yield _peer_chunk(op.public_key, flags, psk, packed[i:j], extra)
        i = j
        if i >= len(packed):
            return
        flags = None if flags is None else flags & WGPEER_F_UPDATE_ONLY
        psk, extra = None, b""


def _set_message(family: int, seq: int, pid: int, prefix: bytes, peers: list[bytes]) -> bytes:
    body = b"".join(peers)
    nest = NLA_HDR.pack(_NEST_HDR_LEN + len(body), NLA_F_NESTED | WGDEVICE_A_PEERS)
    total = NLMSG_HDR.size + len(prefix) + len(nest) + len(body)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_ACK, seq, pid) + prefix + nest + body


def encode_set_peers(
    family: int,
    ifname: str,
    ops: Iterable[PeerOp],
    *,
    seq: int = 1,
    pid: int = 0,
    max_message: int = DEFAULT_MESSAGE,
) -> list[bytes]:
    """SET_DEVICE requests (each with NLM_F_ACK) carrying ``ops`` in order, many peers a message.

    Sequence numbers count up from ``seq``. Each message is at most
    ``max_message`` bytes; a peer that does not fit in an empty message is split.
    """
    return list(iter_set_peers(family, ifname, ops, seq=seq, pid=pid, max_message=max_message))


def iter_set_peers(
    family: int,
    ifname: str,
    ops: Iterable[PeerOp],
    *,
    seq: int = 1,
    pid: int = 0,
    max_message: int = DEFAULT_MESSAGE,
) -> Iterator[bytes]:
    """:func:`encode_set_peers`, one message at a time (so sending can start early)."""
    if not 512 <= max_message <= MAX_MESSAGE:
        raise ValueError("max_message out of range")
    prefix = GENL_HDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0) + _ifname_attr(ifname)
    room = max_message - NLMSG_HDR.size - len(prefix) - _NEST_HDR_LEN
    n = 0
    batch: list[bytes] = []
    used = 0
    for op in ops:
        ips = op.allowed_ips
        if ips is not None and len(ips) <= _FAST_MAX_IPS:
            # One precompiled struct for the whole element: the common peer
            # (one or two allowed IPs) costs a single pack call.
            chunk = _fast_chunk(op, ips)
            if used + len(chunk) > room:
                yield _set_message(family, seq + n, pid, prefix, batch)
                n += 1
                batch, used = [], 0
            batch.append(chunk)
            used += len(chunk)
            continue
        for chunk in _peer_chunks(op, room):
            if used + len(chunk) > room:
                yield _set_message(family, seq + n, pid, prefix, batch)
                n += 1
                batch, used = [], 0
            batch.append(chunk)
            used += len(chunk)
    if batch:
        yield _set_message(family, seq + n, pid, prefix, batch)


_FAST_MAX_IPS = 8


@functools.lru_cache(maxsize=1024)
def _shape(has_psk: bool, sizes: tuple[int, ...]) -> tuple[struct.Struct, int, int]:
    """The struct packing a whole peer element of this shape, its length, its IPs nest length."""
    fmt = "=HH HH32s HHI" + (" HH32s" if has_psk else "") + " HH"
    nest = _NEST_HDR_LEN
    for n in sizes:
        fmt += " HH HHB3x HHH2x HH4s" if n == 4 else " HH HHB3x HHH2x HH16s"
        nest += 28 if n == 4 else 40
    total = _NEST_HDR_LEN + _KEY_ATTR_LEN + _FLAGS_ATTR_LEN + nest
    return struct.Struct(fmt), total + (_KEY_ATTR_LEN if has_psk else 0), nest


def _fast_chunk(op: PeerOp, ips: Sequence[AllowedIP]) -> bytes:
    key, psk = op.public_key, op.preshared_key
    if len(key) != KEY_LEN or (psk is not None and len(psk) != KEY_LEN):
        raise ValueError("key is not 32 bytes")
    st, total, nest = _shape(psk is not None, tuple(len(a) for a, _ in ips))
    vals: list[object] = [total, NLA_F_NESTED, 36, WGPEER_A_PUBLIC_KEY, key, 8, WGPEER_A_FLAGS]
    vals.append(op.flags)
    if psk is not None:
        vals += (36, WGPEER_A_PRESHARED_KEY, psk)
    vals += (nest, NLA_F_NESTED | WGPEER_A_ALLOWEDIPS)
    for addr, cidr in ips:
        if len(addr) == 4:
            vals += (28, NLA_F_NESTED, 5, 3, cidr, 6, 1, socket.AF_INET, 8, 2, addr)
        else:
            vals += (40, NLA_F_NESTED, 5, 3, cidr, 6, 1, socket.AF_INET6, 20, 2, addr)
    return st.pack(*vals)


def encode_set_device(
    family: int,
    ifname: str,
    plan: Plan,
    *,
    seq: int = 1,
    pid: int = 0,
    max_message: int = DEFAULT_MESSAGE,
) -> list[bytes]:
    """The SET_DEVICE requests that apply ``plan``; none for an empty plan."""
    return encode_set_peers(
        family, ifname, plan_ops(plan), seq=seq, pid=pid, max_message=max_message
    )


def encode_set_identity(
    family: int,
    ifname: str,
    *,
    private_key: bytes | None,
    listen_port: int | None,
    seq: int = 1,
    pid: int = 0,
) -> bytes:
    """A SET_DEVICE request setting the private key and/or listen port (no peers touched)."""
    body = GENL_HDR.pack(WG_CMD_SET_DEVICE, WG_GENL_VERSION, 0) + _ifname_attr(ifname)
    if private_key is not None:
        if len(private_key) != KEY_LEN:
            raise ValueError("key is not 32 bytes")
        body += _attr(WGDEVICE_A_PRIVATE_KEY, private_key)
    if listen_port is not None:
        if not 0 <= listen_port <= 0xFFFF:
            raise ValueError("listen port out of range")
        body += _attr(WGDEVICE_A_LISTEN_PORT, _U16.pack(listen_port))
    total = NLMSG_HDR.size + len(body)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_ACK, seq, pid) + body


def encode_get_device(family: int, ifname: str, *, seq: int = 1, pid: int = 0) -> bytes:
    """The GET_DEVICE dump request for one interface."""
    body = GENL_HDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0) + _ifname_attr(ifname)
    total = NLMSG_HDR.size + len(body)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + body


class Message(NamedTuple):
    """One netlink message inside a received buffer: header fields and payload bounds."""

    type: int
    flags: int
    seq: int
    start: int  # first payload byte (after the netlink header)
    end: int


def iter_messages(buf: bytes) -> Iterator[Message]:
    """The netlink messages in one datagram."""
    pos, n = 0, len(buf)
    while pos + NLMSG_HDR.size <= n:
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, pos)
        if length < NLMSG_HDR.size or pos + length > n:
            raise DecodeError("truncated netlink message")
        yield Message(mtype, flags, seq, pos + NLMSG_HDR.size, pos + length)
        pos += _align(length)


def error_code(buf: bytes, msg: Message) -> int:
    """The errno of an NLMSG_ERROR message (0 for an acknowledgement)."""
    if msg.end - msg.start < 4:
        raise DecodeError("truncated netlink error")
    return -int(_I32.unpack_from(buf, msg.start)[0])


class DeviceDecoder:
    """Accumulates the GET_DEVICE dump replies of one interface into a ``Device``.

    The kernel splits a dump where its buffer fills, possibly inside a peer's
    allowed IPs; the next message then starts with the same public key and the
    remaining allowed IPs. Such a peer is merged with the previous one, exactly
    as wireguard-tools does. Endpoints, handshake times, byte counters and
    keepalive are skipped, never kept.
    """

    def __init__(self) -> None:
        self.private_key: bytes | None = None
        self.listen_port = 0
        self._peers: dict[bytes, tuple[bytes | None, list[AllowedIP]]] = {}
        self._last: bytes | None = None

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Decode one reply's genl payload (``buf[start:end]``, after the netlink header)."""
        unpack = NLA_HDR.unpack_from
        pos = start + GENL_HDR.size
        if pos > end:
            raise DecodeError("truncated genl header")
        while pos + 4 <= end:
            alen, atype = unpack(buf, pos)
            aend = pos + alen
            if alen < 4 or aend > end:
                raise DecodeError("bad device attribute length")
            atype &= _NLA_TYPE_MASK
            if atype == WGDEVICE_A_PEERS:
                self._peers_nest(buf, pos + 4, aend)
            elif atype == WGDEVICE_A_PRIVATE_KEY:
                if alen != 4 + KEY_LEN:
                    raise DecodeError("bad private key length")
                k = buf[pos + 4 : aend]
                self.private_key = None if k == ZERO_KEY else k
            elif atype == WGDEVICE_A_LISTEN_PORT:
                if alen < 6:
                    raise DecodeError("bad listen port length")
                self.listen_port = _U16.unpack_from(buf, pos + 4)[0]
            pos += (alen + 3) & ~3

    def _peers_nest(self, buf: bytes, pos: int, end: int) -> None:
        unpack = NLA_HDR.unpack_from
        fast, fast_size, fast_hdrs = _PEER_FAST.unpack_from, _PEER_FAST.size, _PEER_FAST_HDRS
        peers = self._peers
        while pos + 4 <= end:
            plen = unpack(buf, pos)[0]
            pend = pos + plen
            if plen < 4 or pend > end:
                raise DecodeError("bad peer length")
            key: bytes | None = None
            psk: bytes | None = None
            ips: list[AllowedIP] = []
            p = pos + 4
            # Fast path: the kernel's fixed first-part layout, checked by its headers.
            if p + fast_size <= pend:
                r = fast(buf, p)
                if (
                    r[0] == 36
                    and r[1] == WGPEER_A_PUBLIC_KEY
                    and r[3] == 36
                    and r[4] == WGPEER_A_PRESHARED_KEY
                    and r[6:] == fast_hdrs
                ):
                    key, psk = r[2], r[5]
                    p += fast_size
            while p + 4 <= pend:
                alen, atype = unpack(buf, p)
                aend = p + alen
                if alen < 4 or aend > pend:
                    raise DecodeError("bad peer attribute length")
                atype &= _NLA_TYPE_MASK
                if atype == WGPEER_A_ALLOWEDIPS:
                    _allowed_ips(buf, p + 4, aend, ips)
                elif atype == WGPEER_A_PUBLIC_KEY:
                    if alen != 4 + KEY_LEN:
                        raise DecodeError("bad public key length")
                    key = buf[p + 4 : aend]
                elif atype == WGPEER_A_PRESHARED_KEY:
                    if alen != 4 + KEY_LEN:
                        raise DecodeError("bad preshared key length")
                    psk = buf[p + 4 : aend]
                p += (alen + 3) & ~3
            if key is None:
                raise DecodeError("peer without public key")
            if key == self._last:
                peers[key][1].extend(ips)
            else:
                peers[key] = (None if psk is None or psk == ZERO_KEY else psk, ips)
                self._last = key
            pos += (plen + 3) & ~3

    def device(self) -> Device:
        """The device decoded so far (call after NLMSG_DONE)."""
        peers = {k: Peer(k, frozenset(ips), psk) for k, (psk, ips) in self._peers.items()}
        return Device(self.private_key, self.listen_port, peers)


# The kernel writes an allowed IP as CIDR_MASK, FAMILY, IPADDR; these are its
# exact bytes around the prefix length, so one slice comparison validates the
# common case and the generic attribute walk is left for anything else.
_K4_HEAD = NLA_HDR.pack(28, NLA_F_NESTED) + NLA_HDR.pack(5, WGALLOWEDIP_A_CIDR_MASK)
_K4_MID = NLA_HDR.pack(6, WGALLOWEDIP_A_FAMILY) + _U16.pack(socket.AF_INET) + bytes(2)
_K4_MID += NLA_HDR.pack(8, WGALLOWEDIP_A_IPADDR)
_K6_HEAD = NLA_HDR.pack(40, NLA_F_NESTED) + NLA_HDR.pack(5, WGALLOWEDIP_A_CIDR_MASK)
_K6_MID = NLA_HDR.pack(6, WGALLOWEDIP_A_FAMILY) + _U16.pack(socket.AF_INET6) + bytes(2)
_K6_MID += NLA_HDR.pack(20, WGALLOWEDIP_A_IPADDR)


def _allowed_ips(buf: bytes, pos: int, end: int, out: list[AllowedIP]) -> None:
    new = tuple.__new__
    while pos + 4 <= end:
        head = buf[pos : pos + 8]
        if head == _K4_HEAD and pos + 28 <= end and buf[pos + 12 : pos + 24] == _K4_MID:
            cidr = buf[pos + 8]
            if cidr > 32:
                raise DecodeError("bad allowed IP")
            # tuple.__new__ skips NamedTuple's Python-level __new__: ~2x faster.
            out.append(new(AllowedIP, (buf[pos + 24 : pos + 28], cidr)))
            pos += 28
            continue
        if head == _K6_HEAD and pos + 40 <= end and buf[pos + 12 : pos + 24] == _K6_MID:
            cidr = buf[pos + 8]
            if cidr > 128:
                raise DecodeError("bad allowed IP")
            out.append(new(AllowedIP, (buf[pos + 24 : pos + 40], cidr)))
            pos += 40
            continue
        pos = _allowed_ip_generic(buf, pos, end, out)


def _allowed_ip_generic(buf: bytes, pos: int, end: int, out: list[AllowedIP]) -> int:
    """Decode one allowed IP element in any attribute order; returns the next position."""
    unpack = NLA_HDR.unpack_from
    elen: int = unpack(buf, pos)[0]
    eend = pos + elen
    if elen < 4 or eend > end:
        raise DecodeError("bad allowed IP length")
    family = cidr = -1
    addr = b""
    q = pos + 4
    while q + 4 <= eend:
        alen, atype = unpack(buf, q)
        if alen < 4 or q + alen > eend:
            raise DecodeError("bad allowed IP attribute length")
        atype &= _NLA_TYPE_MASK
        if atype == WGALLOWEDIP_A_IPADDR:
            addr = buf[q + 4 : q + alen]
        elif atype == WGALLOWEDIP_A_CIDR_MASK:
            if alen < 5:  # the byte after a shorter one belongs to something else
                raise DecodeError("bad allowed IP attribute length")
            cidr = buf[q + 4]
        elif atype == WGALLOWEDIP_A_FAMILY:
            if alen < 6:
                raise DecodeError("bad allowed IP attribute length")
            family = _U16.unpack_from(buf, q + 4)[0]
        q += (alen + 3) & ~3
    if not (
        (family == socket.AF_INET and len(addr) == 4 and 0 <= cidr <= 32)
        or (family == socket.AF_INET6 and len(addr) == 16 and 0 <= cidr <= 128)
    ):
        raise DecodeError("bad allowed IP")
    out.append(AllowedIP(addr, cidr))
    return pos + ((elen + 3) & ~3)


def decode_device(buf: bytes, *, seq: int | None = None) -> Device:
    """Decode a whole dump answer (a concatenation of datagrams) at once; for tests and tools.

    Raises DecodeError on an error reply or an interrupted dump.
    """
    dec = DeviceDecoder()
    for m in iter_messages(buf):
        if seq is not None and m.seq != seq:
            continue
        if m.type == NLMSG_DONE:
            break
        if m.type == NLMSG_ERROR:
            raise DecodeError(f"error reply (errno {error_code(buf, m)})")
        if m.flags & NLM_F_DUMP_INTR:
            raise DecodeError("dump interrupted")
        dec.add(buf, m.start, m.end)
    return dec.device()


# --- Kernel-shaped dump replies, for the unit tests and for measuring the decoder. ---


def encode_device_dump(
    family: int,
    device: Device,
    *,
    seq: int = 1,
    pid: int = 0,
    max_message: int = 4096,
    interrupted: bool = False,
) -> bytes:
    """The GET_DEVICE dump answer the kernel would send for ``device``, NLMSG_DONE included.

    Like the kernel, it fills each message until ``max_message`` and splits a
    peer's allowed IPs across messages; the continuation repeats only the key.
    """
    head = GENL_HDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0)
    dev_attrs = _attr(WGDEVICE_A_LISTEN_PORT, _U16.pack(device.listen_port))
    if device.private_key is not None:
        dev_attrs += _attr(WGDEVICE_A_PRIVATE_KEY, device.private_key)
    flags = NLM_F_MULTI | (NLM_F_DUMP_INTR if interrupted else 0)
    ops = [
        PeerOp(p.public_key, 0, p.preshared_key or ZERO_KEY, _sorted_ips(p.allowed_ips))
        for p in device.peers.values()
    ]
    room = max_message - NLMSG_HDR.size - len(head) - len(dev_attrs) - _NEST_HDR_LEN
    msgs: list[bytes] = []
    batch: list[bytes] = []
    used = 0

    def flush() -> None:
        nonlocal batch, used
        body = b"".join(batch)
        nest = NLA_HDR.pack(_NEST_HDR_LEN + len(body), NLA_F_NESTED | WGDEVICE_A_PEERS)
        payload = head + (dev_attrs if not msgs else b"") + nest + body
        total = NLMSG_HDR.size + len(payload)
        msgs.append(NLMSG_HDR.pack(total, family, flags, seq, pid) + payload)
        batch, used = [], 0

    for op in ops:
        for chunk in _peer_chunks(op, room, dump=True):
            if used + len(chunk) > room:
                flush()
            batch.append(chunk)
            used += len(chunk)
    if batch or not msgs:
        flush()
    done = NLMSG_HDR.pack(NLMSG_HDR.size + 4, NLMSG_DONE, NLM_F_MULTI, seq, pid) + bytes(4)
    return b"".join(msgs) + done
