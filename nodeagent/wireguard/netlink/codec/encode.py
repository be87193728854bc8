"""Encoding requests to the kernel: SET_DEVICE messages for a plan's peers, and GET_DEVICE.

A plan becomes peer operations (:class:`PeerOp`), each one peer element (or
several, for a peer whose allowed IPs do not fit one message), and the elements
are packed in order into as few messages as ``max_message`` allows
(:func:`pack_elements`). Encoding is done on flat buffers because the generic
NLA machinery of pyroute2 costs about 100 µs a peer, which for 20,000 peers is
slower than ``wg`` itself by an order of magnitude.

Allowed IPs go straight from ``AllowedIPs.packed``, in its canonical order (so
the same plan makes the same bytes), with no ``AllowedIP`` tuple on the way.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import NamedTuple

from nodeagent.core.model import KEY_LEN, ZERO_KEY, Plan, added_parts
from nodeagent.core.names import is_interface_name
from nodeagent.core.routes import AllowedIPs
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
_KEY_ATTR = struct.Struct("=HH32s")
_KEY_ATTR_LEN = _KEY_ATTR.size
_FLAGS_ATTR_LEN = 8


class PeerOp(NamedTuple):
    """One peer element of a SET_DEVICE request, before it is packed into messages."""

    public_key: bytes
    flags: int
    preshared_key: bytes | None  # None: leave it; ZERO_KEY: remove it
    # None: no ALLOWEDIPS attribute at all. Sent in the packed (canonical) order.
    allowed_ips: AllowedIPs | None


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


# One allowed IP as a whole nest element, up to its address: CIDR_MASK (u8),
# FAMILY (u16), then the IPADDR header. The attribute order the kernel itself
# writes; the kernel accepts any order, and the decoder's fast path expects this one.
_AIP_HEAD = struct.Struct("=HH HHB3x HHH2x HH")


def _aip_head(n: int, cidr: int) -> bytes:
    """The bytes of an allowed IP element before its ``n``-byte address."""
    family = socket.AF_INET if n == 4 else socket.AF_INET6
    return _AIP_HEAD.pack(
        _AIP_HEAD.size + n, NLA_F_NESTED, 5, WGALLOWEDIP_A_CIDR_MASK, cidr,
        6, WGALLOWEDIP_A_FAMILY, family, NLA_HDR.size + n, WGALLOWEDIP_A_IPADDR,
    )  # fmt: skip


# By address length (the first byte of a packed route), by prefix length (its second).
_AIP_HEADS = {n: [_aip_head(n, c) for c in range(256)] for n in (4, 16)}


def _kernel_ips(raw: bytes) -> list[bytes]:
    """The allowed IP elements of packed routes (``AllowedIPs.packed``), in their order."""
    out: list[bytes] = []
    pos, end = 0, len(raw)
    while pos < end:
        n = raw[pos]
        out.append(_AIP_HEADS[n][raw[pos + 1]] + raw[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return out


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
    # What PeerOp() does, without its Python-level __new__: a full apply makes one a peer.
    new, replace = tuple.__new__, WGPEER_F_REPLACE_ALLOWEDIPS
    canonical = AllowedIPs.canonical
    for k, psk, routes in added_parts(plan.add):  # a table's: no Peer made on the way
        yield new(PeerOp, (k, replace, psk, canonical(routes)))
    for u in plan.update:
        flags = WGPEER_F_UPDATE_ONLY
        if u.allowed_ips is not None:
            flags |= WGPEER_F_REPLACE_ALLOWEDIPS
        psk = None
        if u.change_preshared_key:
            psk = u.preshared_key if u.preshared_key is not None else ZERO_KEY
        yield PeerOp(u.public_key, flags, psk, u.allowed_ips)
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
    packed = None if op.allowed_ips is None else _kernel_ips(op.allowed_ips.packed)
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
    # What pack_elements does, over each peer's elements, in one loop: a peer
    # costs about a microsecond, and two generators in a row were a third of it.
    batch: list[bytes] = []
    used = 0
    for op in ops:
        element = _fast_element(op)
        if element is not None and len(element) <= room:
            elements: Iterable[bytes] = (element,)
        else:
            elements = peer_elements(op, room)
        for element in elements:
            if used + len(element) > room and batch:
                yield _set_message(family, seq, pid, prefix, batch)
                seq += 1
                batch, used = [], 0
            batch.append(element)
            used += len(element)
    if batch:
        yield _set_message(family, seq, pid, prefix, batch)


def _set_message(family: int, seq: int, pid: int, prefix: bytes, elements: list[bytes]) -> bytes:
    nest = peers_nest(elements)
    total = NLMSG_HDR.size + len(prefix) + len(nest)
    return NLMSG_HDR.pack(total, family, NLM_F_REQUEST | NLM_F_ACK, seq, pid) + prefix + nest


# More routes (packed bytes: 8 IPv6 or 24 IPv4 routes) take the general path.
_FAST_MAX_PACKED = 8 * 18
# By (flags, no psk, packed length or -1 for no ALLOWEDIPS, tail): a few dozen in practice.
_Template = tuple[bytes, Callable[[bytes], tuple[object, ...]]]
_TEMPLATES: dict[tuple[int, bool, int, bytes], _Template] = {}
_MAX_TEMPLATES = 4096


def _fast_element(op: PeerOp) -> bytes | None:
    """:func:`peer_elements` for a peer with a few allowed IPs (or none); None for more.

    One ``bytes % tuple`` on a template cached by the peer's shape (constant
    headers written in; ``%b`` keys and addresses, ``%c`` prefix lengths, these
    two from one ``struct`` unpack of the packed routes): ~1 µs a peer.
    """
    key, flags, psk, ips = op
    if len(key) != KEY_LEN or (psk is not None and len(psk) != KEY_LEN):
        raise ValueError("key is not 32 bytes")
    if ips is None:
        raw, shape = b"", (flags, psk is None, -1, b"")
    else:
        raw = ips.packed
        if len(raw) > _FAST_MAX_PACKED:
            return None
        # Packed routes are sorted, IPv4 (6 bytes) before IPv6 (18): the bytes
        # 18, 36, ... from the end start routes, 16 for each IPv6 one, then 4.
        shape = (flags, psk is None, len(raw), raw[-18::-18])
    template = _TEMPLATES.get(shape)
    if template is None:
        template = _template(*shape)
        if len(_TEMPLATES) < _MAX_TEMPLATES:
            _TEMPLATES[shape] = template
    text, unpack = template
    return text % ((key, *unpack(raw)) if psk is None else (key, psk, *unpack(raw)))


def _lit(b: bytes) -> bytes:
    return b.replace(b"%", b"%%")


def _template(flags: int, no_psk: bool, length: int, tail: bytes) -> _Template:
    """The ``bytes %`` template of a peer element of this shape, and its routes' unpacker."""
    n6 = tail.count(16)
    n4 = (length - 18 * n6) // 6
    nest = NEST_HDR_LEN + (_AIP_HEAD.size + 4) * n4 + (_AIP_HEAD.size + 16) * n6
    total = NEST_HDR_LEN + _KEY_ATTR_LEN + _FLAGS_ATTR_LEN
    total += (0 if no_psk else _KEY_ATTR_LEN) + (nest if length >= 0 else 0)
    text = _lit(NLA_HDR.pack(total, NLA_F_NESTED) + NLA_HDR.pack(36, WGPEER_A_PUBLIC_KEY)) + b"%b"
    text += _lit(NLA_HDR.pack(_FLAGS_ATTR_LEN, WGPEER_A_FLAGS) + U32.pack(flags))
    if not no_psk:
        text += _lit(NLA_HDR.pack(_KEY_ATTR_LEN, WGPEER_A_PRESHARED_KEY)) + b"%b"
    if length >= 0:
        text += _lit(NLA_HDR.pack(nest, NLA_F_NESTED | WGPEER_A_ALLOWEDIPS))
        for n, count in ((4, n4), (16, n6)):
            head = _aip_head(n, 0)  # the prefix length is its u8 at offset 8
            text += (_lit(head[:8]) + b"%c" + _lit(head[9:]) + b"%b") * count
    reader = struct.Struct("=" + "xB4s" * n4 + "xB16s" * n6)
    return text, reader.unpack


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
