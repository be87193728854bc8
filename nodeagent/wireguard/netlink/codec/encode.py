"""Encoding requests to the kernel: SET_DEVICE messages for a plan's peers, and GET_DEVICE.

A plan becomes peer operations (:class:`PeerOp`), each one peer element (or
several, for a peer whose allowed IPs do not fit one message), and the elements
are packed in order into as few messages as ``max_message`` allows
(:func:`pack_elements`). Encoding is done with ``struct`` on flat buffers
because the generic NLA machinery of pyroute2 costs about 100 µs a peer, which
for 20,000 peers is slower than ``wg`` itself by an order of magnitude.
"""

from __future__ import annotations

import functools
import socket
import struct
from collections.abc import Collection, Iterable, Iterator, Sequence
from typing import NamedTuple

from nodeagent.core.model import KEY_LEN, ZERO_KEY, AllowedIP, Plan
from nodeagent.core.names import is_interface_name
from nodeagent.wireguard.netlink.codec.constants import (
    DEFAULT_MESSAGE,
    GENL_HDR,
    MAX_MESSAGE,
    NLA_F_NESTED,
    NLA_HDR,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_HDR,
    U16,
    U32,
    WG_CMD_GET_DEVICE,
    WG_CMD_SET_DEVICE,
    WG_GENL_VERSION,
    WGALLOWEDIP_A_CIDR_MASK,
    WGALLOWEDIP_A_FAMILY,
    WGALLOWEDIP_A_IPADDR,
    WGDEVICE_A_IFNAME,
    WGDEVICE_A_LISTEN_PORT,
    WGDEVICE_A_PEERS,
    WGDEVICE_A_PRIVATE_KEY,
    WGPEER_A_ALLOWEDIPS,
    WGPEER_A_FLAGS,
    WGPEER_A_PRESHARED_KEY,
    WGPEER_A_PUBLIC_KEY,
    WGPEER_F_REMOVE_ME,
    WGPEER_F_REPLACE_ALLOWEDIPS,
    WGPEER_F_UPDATE_ONLY,
)
from nodeagent.wireguard.netlink.codec.framing import align

NEST_HDR_LEN = 4
# One allowed IP as a whole nest element: CIDR_MASK (u8), FAMILY (u16), IPADDR.
_AIP4 = struct.Struct("=HH HHB3x HHH2x HH4s")
_AIP6 = struct.Struct("=HH HHB3x HHH2x HH16s")
_KEY_ATTR = struct.Struct("=HH32s")
_KEY_ATTR_LEN = _KEY_ATTR.size
_FLAGS_ATTR_LEN = 8
_FAST_MAX_IPS = 8


class PeerOp(NamedTuple):
    """One peer element of a SET_DEVICE request, before it is packed into messages."""

    public_key: bytes
    flags: int
    preshared_key: bytes | None  # None: leave it; ZERO_KEY: remove it
    allowed_ips: Sequence[AllowedIP] | None  # None: no ALLOWEDIPS attribute at all


def attr(atype: int, payload: bytes) -> bytes:
    """One attribute: header, payload, padding."""
    n = NLA_HDR.size + len(payload)
    return NLA_HDR.pack(n, atype) + payload + bytes(align(n) - n)


def _ifname_attr(ifname: str) -> bytes:
    # The agent's own rules (core.names): ASCII, so one character is one byte
    # and the name with its NUL fits the kernel's IFNAMSIZ.
    if not is_interface_name(ifname):
        raise ValueError("bad interface name")
    return attr(WGDEVICE_A_IFNAME, ifname.encode("ascii") + b"\0")


def sorted_ips(ips: Collection[AllowedIP]) -> list[AllowedIP]:
    """``ips`` in a fixed order, so that the same plan always makes the same bytes."""
    # Tests compare the bytes. Plain tuple order (address bytes, then prefix):
    # a key function costs 5x as much.
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
            p.public_key, WGPEER_F_REPLACE_ALLOWEDIPS, p.preshared_key, sorted_ips(p.allowed_ips)
        )
    for u in plan.update:
        flags = WGPEER_F_UPDATE_ONLY
        ips: list[AllowedIP] | None = None
        if u.allowed_ips is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
            ips = sorted_ips(u.allowed_ips)
        psk = None
        if u.change_preshared_key:
            psk = u.preshared_key if u.preshared_key is not None else ZERO_KEY
        yield PeerOp(u.public_key, flags, psk, ips)
    for k in plan.remove:
        yield PeerOp(k, WGPEER_F_REMOVE_ME, None, None)


def _peer_element(
    key: bytes,
    flags: int | None,
    psk: bytes | None,
    ips: Sequence[bytes] | None,
    extra: bytes = b"",
) -> bytes:
    """One peer nest element, given its allowed IPs already packed.

    ``flags`` None leaves out the flags attribute (as the kernel's dump does);
    ``extra`` is appended before the allowed IPs.
    """
    if len(key) != KEY_LEN or (psk is not None and len(psk) != KEY_LEN):
        raise ValueError("key is not 32 bytes")
    parts: list[bytes] = []
    n = NEST_HDR_LEN + _KEY_ATTR_LEN
    if flags is not None:
        parts.append(NLA_HDR.pack(_FLAGS_ATTR_LEN, WGPEER_A_FLAGS) + U32.pack(flags))
        n += _FLAGS_ATTR_LEN
    if psk is not None:
        parts.append(_KEY_ATTR.pack(_KEY_ATTR_LEN, WGPEER_A_PRESHARED_KEY, psk))
        n += _KEY_ATTR_LEN
    if extra:
        parts.append(extra)
        n += len(extra)
    if ips is not None:
        body = b"".join(ips)
        parts.append(NLA_HDR.pack(NEST_HDR_LEN + len(body), NLA_F_NESTED | WGPEER_A_ALLOWEDIPS))
        parts.append(body)
        n += NEST_HDR_LEN + len(body)
    head = NLA_HDR.pack(n, NLA_F_NESTED) + _KEY_ATTR.pack(_KEY_ATTR_LEN, WGPEER_A_PUBLIC_KEY, key)
    return head + b"".join(parts)


def peer_elements(
    op: PeerOp, room: int, *, with_flags: bool = True, extra: bytes = b""
) -> Iterator[bytes]:
    """A peer as one element, or split into elements of at most ``room`` bytes.

    A continuation element repeats the public key with no REPLACE_ALLOWEDIPS
    (and no preshared key), so the kernel appends its allowed IPs to those
    already sent, as wireguard-tools does. ``with_flags=False`` leaves out the
    flags attribute and ``extra`` goes into the first element before the
    allowed IPs: the shape of the kernel's own GET_DEVICE answer (tests).
    """
    packed = None if op.allowed_ips is None else [_pack_ip_kernel(ip) for ip in op.allowed_ips]
    flags: int | None = op.flags if with_flags else None
    psk = op.preshared_key
    whole = _peer_element(op.public_key, flags, psk, packed, extra)
    if len(whole) <= room or packed is None:
        yield whole
        return
    i = 0
    while True:
        used = len(_peer_element(op.public_key, flags, psk, [], extra))
        j = i
        while j < len(packed) and used + len(packed[j]) <= room:
            used += len(packed[j])
            j += 1
        if j == i and i < len(packed):
            raise ValueError("message size too small for one allowed IP")
        yield _peer_element(op.public_key, flags, psk, packed[i:j], extra)
        i = j
        if i >= len(packed):
            return
        flags = None if flags is None else flags & WGPEER_F_UPDATE_ONLY
        psk, extra = None, b""


def pack_elements(elements: Iterable[bytes], room: int) -> Iterator[list[bytes]]:
    """``elements`` in order, in consecutive runs of at most ``room`` bytes: one run a message.

    A run is cut only before the element that would overflow it, so every
    message but the last is as full as the element sizes allow; no run is empty.
    """
    batch: list[bytes] = []
    used = 0
    for element in elements:
        if used + len(element) > room and batch:
            yield batch
            batch, used = [], 0
        batch.append(element)
        used += len(element)
    if batch:
        yield batch


def peers_nest(elements: Sequence[bytes]) -> bytes:
    """The WGDEVICE_A_PEERS attribute holding ``elements``."""
    body = b"".join(elements)
    return NLA_HDR.pack(NEST_HDR_LEN + len(body), NLA_F_NESTED | WGDEVICE_A_PEERS) + body


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
    room = max_message - NLMSG_HDR.size - len(prefix) - NEST_HDR_LEN
    for n, batch in enumerate(pack_elements(_set_elements(ops, room), room)):
        yield _set_message(family, seq + n, pid, prefix, batch)


def _set_message(family: int, seq: int, pid: int, prefix: bytes, elements: list[bytes]) -> bytes:
    nest = peers_nest(elements)
    total = NLMSG_HDR.size + len(prefix) + len(nest)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_ACK, seq, pid) + prefix + nest


def _set_elements(ops: Iterable[PeerOp], room: int) -> Iterator[bytes]:
    for op in ops:
        ips = op.allowed_ips
        if ips is not None and len(ips) <= _FAST_MAX_IPS:
            # One precompiled struct for the whole element: the common peer
            # (one or two allowed IPs) costs a single pack call.
            yield _fast_element(op, ips)
        else:
            yield from peer_elements(op, room)


@functools.lru_cache(maxsize=1024)
def _shape(has_psk: bool, sizes: tuple[int, ...]) -> tuple[struct.Struct, int, int]:
    """The struct packing a whole peer element of this shape, its length, its IPs nest length."""
    fmt = "=HH HH32s HHI" + (" HH32s" if has_psk else "") + " HH"
    nest = NEST_HDR_LEN
    for n in sizes:
        fmt += " HH HHB3x HHH2x HH4s" if n == 4 else " HH HHB3x HHH2x HH16s"
        nest += 28 if n == 4 else 40
    total = NEST_HDR_LEN + _KEY_ATTR_LEN + _FLAGS_ATTR_LEN + nest
    return struct.Struct(fmt), total + (_KEY_ATTR_LEN if has_psk else 0), nest


def _fast_element(op: PeerOp, ips: Sequence[AllowedIP]) -> bytes:
    """:func:`peer_elements` for a peer with a few allowed IPs, in one pack call."""
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
        body += attr(WGDEVICE_A_PRIVATE_KEY, private_key)
    if listen_port is not None:
        if not 0 <= listen_port <= 0xFFFF:
            raise ValueError("listen port out of range")
        body += attr(WGDEVICE_A_LISTEN_PORT, U16.pack(listen_port))
    total = NLMSG_HDR.size + len(body)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_ACK, seq, pid) + body


def encode_get_device(family: int, ifname: str, *, seq: int = 1, pid: int = 0) -> bytes:
    """The GET_DEVICE dump request for one interface."""
    body = GENL_HDR.pack(WG_CMD_GET_DEVICE, WG_GENL_VERSION, 0) + _ifname_attr(ifname)
    total = NLMSG_HDR.size + len(body)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_DUMP, seq, pid) + body
