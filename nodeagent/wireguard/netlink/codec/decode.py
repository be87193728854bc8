"""Decoding GET_DEVICE dump replies into a ``Device``: key, port, peers and their allowed IPs.

Only what the agent reconciles is kept. Endpoints, handshake times, byte
counters and keepalive are skipped without being read (``netlink.idle`` reads
the first two for the scrubber, and keeps neither).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable

from nodeagent.core.model import KEY_LEN, ZERO_KEY, Device, PeerTable, peer_record
from nodeagent.core.routes import AllowedIP, packed_routes
from nodeagent.wireguard.netlink.codec.constants import (
    GENL_HDR,
    NLA_F_NESTED,
    NLA_HDR,
    NLA_TYPE_MASK,
    NLM_F_DUMP_INTR,
    NLMSG_DONE,
    NLMSG_ERROR,
    U16,
    WGALLOWEDIP_A_CIDR_MASK,
    WGALLOWEDIP_A_FAMILY,
    WGALLOWEDIP_A_IPADDR,
    WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_PEERS,
    WGDEVICE_A_PRIVATE_KEY,
    WGPEER_A_ALLOWEDIPS,
    WGPEER_A_LAST_HANDSHAKE_TIME,
    WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    WGPEER_A_PRESHARED_KEY,
    WGPEER_A_PROTOCOL_VERSION,
    WGPEER_A_PUBLIC_KEY,
    WGPEER_A_RX_BYTES,
    WGPEER_A_TX_BYTES,
)
from nodeagent.wireguard.netlink.codec.framing import (
    DecodeError,
    align,
    error_code,
    iter_attrs,
    iter_messages,
)

# What the kernel's GET_DEVICE puts first in a peer, in this order: public and
# preshared key, last handshake (timespec64), keepalive (u16), tx and rx bytes
# (u64), protocol version (u32). When the headers match, one unpack takes the
# keys and skips the rest. (``codec.digest`` relies on the same layout.)
PEER_FAST = struct.Struct("=HH32s HH32s HH16x HH4x HH8x HH8x HH4x")
PEER_FAST_HDRS = (
    20, WGPEER_A_LAST_HANDSHAKE_TIME, 6, WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL,
    12, WGPEER_A_TX_BYTES, 12, WGPEER_A_RX_BYTES, 8, WGPEER_A_PROTOCOL_VERSION,
)  # fmt: skip


def walk_device(
    buf: bytes, start: int, end: int, peers_nest: Callable[[bytes, int, int], None]
) -> tuple[bytes | None, int | None]:
    """Walk one GET_DEVICE reply's genl payload (``buf[start:end]``).

    Each WGDEVICE_A_PEERS nest goes to ``peers_nest(buf, start, end)``; the
    private key and listen port the reply carries (the last of each) come back,
    None where absent. Bad lengths raise ``DecodeError``.
    """
    pos = start + GENL_HDR.size
    if pos > end:
        raise DecodeError("truncated genl header")
    key: bytes | None = None
    port: int | None = None
    for atype, a, b in iter_attrs(buf, pos, end, "bad device attribute length"):
        if atype == WGDEVICE_A_PEERS:
            peers_nest(buf, a, b)
        elif atype == WGDEVICE_A_PRIVATE_KEY:
            if b - a != KEY_LEN:
                raise DecodeError("bad private key length")
            key = buf[a:b]
        elif atype == WGDEVICE_A_LISTEN_PORT:
            if b - a < 2:
                raise DecodeError("bad listen port length")
            port = U16.unpack_from(buf, a)[0]
    return key, port


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
        # Per key: its preshared key and its routes, packed (AllowedIPs.from_packed).
        self._peers: dict[bytes, tuple[bytes | None, list[bytes]]] = {}
        self._last: bytes | None = None

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Decode one reply's genl payload (``buf[start:end]``, after the netlink header)."""
        key, port = walk_device(buf, start, end, self._peers_nest)
        if key is not None:
            self.private_key = None if key == ZERO_KEY else key
        if port is not None:
            self.listen_port = port

    def _peers_nest(self, buf: bytes, pos: int, end: int) -> None:
        peer = self.peer
        for _t, first, pend in iter_attrs(buf, pos, end, "bad peer length"):
            peer(buf, first, pend)

    def peer(self, buf: bytes, p: int, pend: int) -> None:
        """Decode one element of WGDEVICE_A_PEERS (``buf[p:pend]``), merging a continuation."""
        key: bytes | None = None
        psk: bytes | None = None
        ips: list[bytes] = []
        # Fast path: the kernel's fixed first-part layout, checked by its headers.
        if p + PEER_FAST.size <= pend:
            r = PEER_FAST.unpack_from(buf, p)
            if (
                r[0] == 36
                and r[1] == WGPEER_A_PUBLIC_KEY
                and r[3] == 36
                and r[4] == WGPEER_A_PRESHARED_KEY
                and r[6:] == PEER_FAST_HDRS
            ):
                key, psk = r[2], r[5]
                p += PEER_FAST.size
                # The kernel's last attribute of a peer without an endpoint: its
                # allowed IPs, up to the peer's end (no walker for one element).
                if p + 4 <= pend:
                    alen, atype = NLA_HDR.unpack_from(buf, p)
                    if atype & NLA_TYPE_MASK == WGPEER_A_ALLOWEDIPS and p + alen == pend:
                        _allowed_ips(buf, p + 4, pend, ips)
                        p = pend
        if p < pend:  # what the fast paths did not take, in any order
            for atype, a, b in iter_attrs(buf, p, pend, "bad peer attribute length"):
                if atype == WGPEER_A_ALLOWEDIPS:
                    _allowed_ips(buf, a, b, ips)
                elif atype == WGPEER_A_PUBLIC_KEY:
                    if b - a != KEY_LEN:
                        raise DecodeError("bad public key length")
                    key = buf[a:b]
                elif atype == WGPEER_A_PRESHARED_KEY:
                    if b - a != KEY_LEN:
                        raise DecodeError("bad preshared key length")
                    psk = buf[a:b]
        if key is None:
            raise DecodeError("peer without public key")
        peers = self._peers
        if key == self._last:
            peers[key][1].extend(ips)
        else:
            peers[key] = (None if psk is None or psk == ZERO_KEY else psk, ips)
            self._last = key

    def device(self) -> Device:
        """The device decoded so far (call after NLMSG_DONE); its peers as a :class:`PeerTable`."""
        records = {k: peer_record(packed_routes(ips), psk) for k, (psk, ips) in self._peers.items()}
        return Device(self.private_key, self.listen_port, PeerTable.of_records(records))


# The kernel writes an allowed IP as CIDR_MASK, FAMILY, IPADDR; these are its
# exact bytes around the prefix length, so one slice comparison validates the
# common case and the generic attribute walk is left for anything else.
_K4_HEAD = NLA_HDR.pack(28, NLA_F_NESTED) + NLA_HDR.pack(5, WGALLOWEDIP_A_CIDR_MASK)
_K4_MID = NLA_HDR.pack(6, WGALLOWEDIP_A_FAMILY) + U16.pack(socket.AF_INET) + bytes(2)
_K4_MID += NLA_HDR.pack(8, WGALLOWEDIP_A_IPADDR)
_K6_HEAD = NLA_HDR.pack(40, NLA_F_NESTED) + NLA_HDR.pack(5, WGALLOWEDIP_A_CIDR_MASK)
_K6_MID = NLA_HDR.pack(6, WGALLOWEDIP_A_FAMILY) + U16.pack(socket.AF_INET6) + bytes(2)
_K6_MID += NLA_HDR.pack(20, WGALLOWEDIP_A_IPADDR)


# The first two bytes of a packed route (AllowedIPs), by prefix length.
_V4 = [bytes((4, c)) for c in range(33)]
_V6 = [bytes((16, c)) for c in range(129)]


def _allowed_ips(buf: bytes, pos: int, end: int, out: list[bytes]) -> None:
    """Append the allowed IPs of one WGPEER_A_ALLOWEDIPS nest (``buf[pos:end]``), packed."""
    while pos + 4 <= end:
        head = buf[pos : pos + 8]
        if head == _K4_HEAD and pos + 28 <= end and buf[pos + 12 : pos + 24] == _K4_MID:
            cidr = buf[pos + 8]
            if cidr > 32:
                raise DecodeError("bad allowed IP")
            out.append(_V4[cidr] + buf[pos + 24 : pos + 28])
            pos += 28
            continue
        if head == _K6_HEAD and pos + 40 <= end and buf[pos + 12 : pos + 24] == _K6_MID:
            cidr = buf[pos + 8]
            if cidr > 128:
                raise DecodeError("bad allowed IP")
            out.append(_V6[cidr] + buf[pos + 24 : pos + 40])
            pos += 40
            continue
        # Anything else is one element taken by the walker, which checks its length.
        _t, a, b = next(iter_attrs(buf, pos, end, "bad allowed IP length"))
        ip = _allowed_ip(buf, a, b)
        out.append((_V4 if len(ip.address) == 4 else _V6)[ip.cidr] + ip.address)
        pos += align(b - pos)


def _allowed_ip(buf: bytes, pos: int, end: int) -> AllowedIP:
    """One allowed IP element's attributes (``buf[pos:end]``) in any order."""
    family = cidr = -1
    addr = b""
    for atype, a, b in iter_attrs(buf, pos, end, "bad allowed IP attribute length"):
        if atype == WGALLOWEDIP_A_IPADDR:
            addr = buf[a:b]
        elif atype == WGALLOWEDIP_A_CIDR_MASK:
            if b - a < 1:  # the byte after a shorter one belongs to something else
                raise DecodeError("bad allowed IP attribute length")
            cidr = buf[a]
        elif atype == WGALLOWEDIP_A_FAMILY:
            if b - a < 2:
                raise DecodeError("bad allowed IP attribute length")
            family = U16.unpack_from(buf, a)[0]
    if not (
        (family == socket.AF_INET and len(addr) == 4 and 0 <= cidr <= 32)
        or (family == socket.AF_INET6 and len(addr) == 16 and 0 <= cidr <= 128)
    ):
        raise DecodeError("bad allowed IP")
    return AllowedIP(addr, cidr)


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
