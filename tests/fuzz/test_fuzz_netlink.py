"""Fuzz target: netlink dumps (``nlwire``, ``netlink_idle``, ``load.counters``).

Inputs: random bytes, and dumps as the kernel writes them
(``tests.wgencode.encode_device_dump``, split mid-peer; peers with endpoints and
handshake times; rtnetlink link dumps) with bytes flipped, attribute lengths
overwritten with edge values, and cuts, insertions and splices, sent whole or
cut into datagrams anywhere. The WireGuard decoders end in
``nlwire.DecodeError`` (``DumpError`` for an errno answer) or a valid value; the
link dump parser ends in ``ValueError`` or a list of messages whose counters
are numbers, and the link reader, answered with such bytes over a scripted
socket, in ``CounterError`` or the counters of links it asked for.
"""

from __future__ import annotations

import errno
import socket
import struct
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.core.idle import PeerActivity, handshake_age, select_idle
from nodeagent.core.model import KEY_LEN, ZERO_KEY, Device, Peer
from nodeagent.core.routes import AllowedIP
from nodeagent.load.counters import CounterError, LinkCounters, LinkReader, decode_dump, parse_links
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.idle import (
    ActivityDecoder,
    DumpError,
    ScrubDecoder,
    idle_from_dump,
)
from tests.fuzz.harness import ended_well, target
from tests.peerdata import key
from tests.wgencode import encode_device_dump, route_element

FAMILY = 30
SEQ = 7
NOW = 1_800_000_000.0
KEYS = [key("nl", i) for i in range(6)]

allowed_ip = st.one_of(
    st.builds(
        lambda a, c: AllowedIP(bytes(a), c), st.binary(min_size=4, max_size=4), st.integers(0, 32)
    ),
    st.builds(
        lambda a, c: AllowedIP(bytes(a), c),
        st.binary(min_size=16, max_size=16),
        st.integers(0, 128),
    ),
)
peer = st.builds(
    Peer,
    st.one_of(st.sampled_from(KEYS), st.binary(min_size=KEY_LEN, max_size=KEY_LEN)),
    st.frozensets(allowed_ip, max_size=40),
    st.one_of(st.none(), st.sampled_from(KEYS)),
)
device = st.builds(
    Device,
    st.one_of(st.none(), st.binary(min_size=KEY_LEN, max_size=KEY_LEN).filter(any)),
    st.integers(0, 65535),
    st.lists(peer, max_size=5).map(lambda ps: {p.public_key: p for p in ps}),
)
device_dump = st.builds(
    lambda d, size: encode_device_dump(FAMILY, d, seq=SEQ, max_message=size),
    device,
    st.sampled_from([512, 700, 4096]),
)


# --- dumps with activity, as the kernel writes them -----------------------------------


def _attr(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + bytes((-n) % 4)


SIN = struct.pack("!HH4s8x", socket.AF_INET, 51820, bytes([192, 0, 2, 2]))
SIN6 = struct.pack("!HHI16sI", socket.AF_INET6, 51820, 0, bytes(15) + b"\x02", 0)


def _active_peer(p: Peer, endpoint: bytes | None, sec: int, nsec: int) -> bytes:
    body = _attr(nlwire.WGPEER_A_PUBLIC_KEY, p.public_key)
    body += _attr(nlwire.WGPEER_A_PRESHARED_KEY, p.preshared_key or ZERO_KEY)
    if endpoint is not None:
        body += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    body += _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, nsec))
    ips = b"".join(route_element(ip) for ip in sorted(p.allowed_ips))
    body += _attr(nlwire.NLA_F_NESTED | nlwire.WGPEER_A_ALLOWEDIPS, ips)
    return _attr(nlwire.NLA_F_NESTED, body)


def _activity_dump(peers: list[tuple[Peer, bytes | None, int, int]], flags: int) -> bytes:
    payload = nlwire.GENL_HDR.pack(0, 1, 0) + _attr(
        nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS,
        b"".join(_active_peer(*p) for p in peers),
    )
    msg = nlwire.NLMSG_HDR.pack(16 + len(payload), FAMILY, flags, SEQ, 0) + payload
    done = nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, SEQ, 0) + bytes(4)
    return msg + done


def _kernel_elements(p: Peer, endpoint: bytes | None, sec: int, nsec: int) -> list[bytes]:
    """A peer as the kernel's GET_DEVICE writes it: keys, handshake, keepalive, counters,
    version, the endpoint if any, allowed IPs; a second route goes into a continuation
    that repeats only the key (as when the kernel splits a peer across messages)."""
    head = _attr(nlwire.WGPEER_A_PUBLIC_KEY, p.public_key)
    first = head + _attr(nlwire.WGPEER_A_PRESHARED_KEY, p.preshared_key or ZERO_KEY)
    first += _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, nsec))
    first += _attr(nlwire.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, bytes(2))
    first += _attr(nlwire.WGPEER_A_TX_BYTES, bytes(8)) + _attr(nlwire.WGPEER_A_RX_BYTES, bytes(8))
    first += _attr(nlwire.WGPEER_A_PROTOCOL_VERSION, struct.pack("=I", 1))
    if endpoint is not None:
        first += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    ips = [route_element(ip) for ip in sorted(p.allowed_ips)]
    nest = nlwire.NLA_F_NESTED | nlwire.WGPEER_A_ALLOWEDIPS
    if not ips:
        return [_attr(nlwire.NLA_F_NESTED, first)]
    out = [_attr(nlwire.NLA_F_NESTED, first + _attr(nest, ips[0]))]
    if len(ips) > 1:
        out.append(_attr(nlwire.NLA_F_NESTED, head + _attr(nest, b"".join(ips[1:]))))
    return out


def _kernel_dump(peers: list[tuple[Peer, bytes | None, int, int]], per_message: int) -> bytes:
    elements = [e for args in peers for e in _kernel_elements(*args)]
    out = b""
    for i in range(0, len(elements), per_message):
        payload = nlwire.GENL_HDR.pack(0, 1, 0) + _attr(
            nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS, b"".join(elements[i : i + per_message])
        )
        out += nlwire.NLMSG_HDR.pack(16 + len(payload), FAMILY, nlwire.NLM_F_MULTI, SEQ, 0)
        out += payload
    return out + nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, SEQ, 0) + bytes(4)


handshake_sec = st.one_of(
    st.sampled_from([0, int(NOW) - 500, int(NOW)]), st.integers(-(2**63), 2**63 - 1)
)
kernel_dump = st.builds(
    _kernel_dump,
    st.lists(
        st.tuples(
            peer,
            st.sampled_from([None, None, SIN, SIN6, bytes(16), b"\x02"]),
            handshake_sec,
            st.integers(0, 10**9),
        ),
        max_size=5,
        unique_by=lambda t: t[0].public_key,
    ),
    st.integers(1, 4),
)
activity_dump = st.builds(
    _activity_dump,
    st.lists(
        st.tuples(
            peer,
            st.sampled_from([None, SIN, SIN6, bytes(16), b"\x02"]),
            st.one_of(
                st.sampled_from([0, int(NOW) - 500, int(NOW)]), st.integers(-(2**63), 2**63 - 1)
            ),
            st.integers(-(2**63), 2**63 - 1),
        ),
        max_size=4,
    ),
    st.sampled_from([nlwire.NLM_F_MULTI, nlwire.NLM_F_MULTI | nlwire.NLM_F_DUMP_INTR]),
)
error_answer = st.builds(
    lambda code, n: (
        nlwire.NLMSG_HDR.pack(16 + n, nlwire.NLMSG_ERROR, 0, SEQ, 0) + struct.pack("=i", code)[:n]
    ),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 4),
)

# Dumps shaped like WireGuard's attribute tree, device > peers > peer > allowed IPs > allowed
# IP, with attributes of any type and payloads of the sizes the decoders expect and of
# others, so that each length check meets its edge cases.
_payload = st.sampled_from([0, 0, 1, 2, 3, 4, 8, 16, 20, 32, 33]).flatmap(
    lambda n: st.binary(min_size=n, max_size=n)
)


def _nest(atype: int, children: st.SearchStrategy[bytes], n: int) -> st.SearchStrategy[bytes]:
    return st.builds(
        lambda ks: _attr(atype | nlwire.NLA_F_NESTED, b"".join(ks)), st.lists(children, max_size=n)
    )


_any_attr = st.builds(_attr, st.integers(0, 11), _payload)
_ip_attr = st.builds(_attr, st.sampled_from([1, 2, 3, 1, 2, 3, 0, 11]), _payload)
_ip_element = _nest(0, _ip_attr, 3)
_peer_attr = st.one_of(
    st.builds(_attr, st.just(nlwire.WGPEER_A_PUBLIC_KEY), st.sampled_from(KEYS)),
    _any_attr,
    _nest(nlwire.WGPEER_A_ALLOWEDIPS, _ip_element, 2),
    _nest(nlwire.WGPEER_A_ALLOWEDIPS, _ip_element, 2),
)
_peer_element = _nest(0, _peer_attr, 3)
_device_attr = st.one_of(_any_attr, _nest(nlwire.WGDEVICE_A_PEERS, _peer_element, 2))


def _genl_dump(attrs: list[bytes], mtype: int, done: bool) -> bytes:
    payload = nlwire.GENL_HDR.pack(0, 1, 0) + b"".join(attrs)
    msg = nlwire.NLMSG_HDR.pack(16 + len(payload), mtype, nlwire.NLM_F_MULTI, SEQ, 0) + payload
    if not done:  # the message ends the buffer: a read past an attribute finds no byte
        return msg
    return msg + nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, SEQ, 0) + bytes(4)


tlv_dump = st.builds(
    _genl_dump,
    st.lists(_device_attr, max_size=2),
    st.sampled_from([FAMILY, FAMILY, FAMILY, nlwire.NLMSG_ERROR, nlwire.NLMSG_DONE]),
    st.booleans(),
)

# --- rtnetlink link dumps (tests/unit/test_counters_parse.py builds them the same way) ---


def _newlink(index: int, name: bytes, stats: bytes | None) -> bytes:
    body = struct.pack("=BBHiII", 0, 0, 1, index, 0x1043, 0) + _attr(3, name + b"\0")
    if stats is not None:
        body += _attr(23, stats)  # IFLA_STATS64
    return struct.pack("=IHHII", 16 + len(body), 16, 2, 1, 0) + body


link_dump = st.builds(
    lambda links: b"".join(links) + struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0),
    st.lists(
        st.builds(
            _newlink,
            st.integers(-(2**31), 2**31 - 1),
            st.sampled_from([b"eth0", b"wg0", b"", b"\xff\xfe", b"x" * 40]),
            st.one_of(
                st.none(),
                st.lists(st.integers(0, 2**64 - 1), min_size=23, max_size=24).map(
                    lambda v: struct.pack(f"={len(v)}Q", *v)
                ),
                st.binary(max_size=200),
            ),
        ),
        max_size=3,
    ),
)

# --- mutations --------------------------------------------------------------------------

_EDGE_LENGTHS = [0, 1, 3, 4, 5, 6, 7, 8, 15, 16, 19, 20, 36, 0x7FFF, 0xFFFF]


def _mutate(data: bytes, edits: list[tuple[int, int, int, bytes]]) -> bytes:
    out = bytearray(data)
    for op, pos, value, new in edits:
        pos %= len(out) + 1
        if op == 0:
            out[pos : pos + 1] = bytes([value & 0xFF])
        elif op == 1 and pos + 2 <= len(out):
            # An attribute or message length (u16) set to an edge value.
            out[pos : pos + 2] = struct.pack("=H", _EDGE_LENGTHS[value % len(_EDGE_LENGTHS)])
        elif op == 2 and pos + 4 <= len(out):
            out[pos : pos + 4] = struct.pack("=I", value)
        elif op == 3:
            del out[pos:]
        elif op == 4:
            out[pos:pos] = new
        else:
            del out[pos : pos + 1 + value % 8]
    return bytes(out)


edits = st.lists(
    st.tuples(
        st.integers(0, 5), st.integers(0, 1 << 16), st.integers(0, 2**32 - 1), st.binary(max_size=8)
    ),
    min_size=1,
    max_size=4,
)


def mutated(dumps: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Dumps, most of them with a few edits."""
    return st.integers(0, 4).flatmap(
        lambda n: dumps if n == 2 else st.builds(_mutate, dumps, edits)
    )


wireguard_bytes = st.one_of(
    tlv_dump,
    mutated(tlv_dump),
    mutated(device_dump),
    mutated(activity_dump),
    mutated(kernel_dump),
    mutated(st.builds(lambda a, b: a + b, error_answer, device_dump)),
    st.binary(max_size=300),
)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


datagrams = st.builds(_cut, wireguard_bytes, st.lists(st.integers(0, 1 << 16), max_size=3))

# --- what a valid value is ----------------------------------------------------------------


def check_device(dev: Any) -> None:
    assert isinstance(dev, Device)
    assert dev.private_key is None or len(dev.private_key) == KEY_LEN
    assert 0 <= dev.listen_port <= 65535
    for k, p in dev.peers.items():
        check_peer(p)
        assert p.public_key == k


def check_peer(p: Any) -> None:
    assert isinstance(p, Peer) and len(p.public_key) == KEY_LEN
    assert p.preshared_key is None or len(p.preshared_key) == KEY_LEN
    for ip in p.allowed_ips:
        assert isinstance(ip.address, bytes) and isinstance(ip.cidr, int)
        assert (len(ip.address), ip.cidr <= len(ip.address) * 8) in ((4, True), (16, True))


# --- targets ------------------------------------------------------------------------------


@target(100)
@given(device, st.sampled_from([512, 700, 4096]))
def test_device_dump_round_trip(dev: Device, size: int) -> None:
    dump = encode_device_dump(FAMILY, dev, seq=SEQ, max_message=size)
    assert nlwire.decode_device(dump, seq=SEQ) == dev


@target(500)
@given(wireguard_bytes)
def test_messages_and_device_decoder(data: bytes) -> None:
    decode_messages(data)


@target(1000)
@given(tlv_dump)
def test_attribute_trees(data: bytes) -> None:
    decode_messages(data)


def decode_messages(data: bytes) -> None:
    messages = ended_well(lambda: list(nlwire.iter_messages(data)), nlwire.DecodeError)
    if isinstance(messages, nlwire.DecodeError):
        return
    # A decoder must read nothing past a message's end: fed the same message with the
    # buffer cut right after it, and with other bytes after it, it must decode the same.
    dec, cut, other = nlwire.DeviceDecoder(), nlwire.DeviceDecoder(), nlwire.DeviceDecoder()
    for m in messages:
        assert 0 <= m.start <= m.end <= len(data)
        code = ended_well(lambda m=m: nlwire.error_code(data, m), nlwire.DecodeError)
        assert isinstance(code, int | nlwire.DecodeError)
        outcomes = [
            ended_well(lambda m=m, d=d, b=b: d.add(b, m.start, m.end), nlwire.DecodeError)
            for d, b in (
                (dec, data),
                (cut, data[: m.end]),
                (other, data[: m.end] + b"\xff" * 64),
            )
        ]
        assert len({type(o) for o in outcomes}) == 1, "a decoder read past the message"
        if outcomes[0] is not None:
            return
    check_device(dec.device())
    assert dec.device() == cut.device() == other.device(), "a decoder read past the message"


@target(500)
@given(wireguard_bytes)
def test_decode_device(data: bytes) -> None:
    dev = ended_well(lambda: nlwire.decode_device(data, seq=SEQ), nlwire.DecodeError)
    if not isinstance(dev, nlwire.DecodeError):
        check_device(dev)


@target(500)
@given(datagrams, st.floats(0, 1e6))
def test_idle_from_dump(parts: list[bytes], idle_after: float) -> None:
    idle = ended_well(
        lambda: idle_from_dump(parts, SEQ, idle_after, NOW), (nlwire.DecodeError, DumpError)
    )
    if isinstance(idle, DumpError):
        assert isinstance(idle.code, int) and idle.code != 0
    elif not isinstance(idle, nlwire.DecodeError):
        assert isinstance(idle, list)
        for p in idle:
            check_peer(p)


@target(300)
@given(wireguard_bytes)
def test_activity_and_scrub_decoders(data: bytes) -> None:
    messages = ended_well(lambda: list(nlwire.iter_messages(data)), nlwire.DecodeError)
    if isinstance(messages, nlwire.DecodeError):
        return
    activity, scrub = ActivityDecoder(NOW), ScrubDecoder(NOW)
    for m in messages:
        for dec in (activity, scrub):
            # Cut right after the message: a read past its end fails here.
            if ended_well(
                lambda m=m, d=dec: d.add(data[: m.end], m.start, m.end), nlwire.DecodeError
            ):
                return
    for a in activity.peers.values():
        assert len(a.public_key) == KEY_LEN and a.has_endpoint is True
        assert a.handshake_age is None or isinstance(a.handshake_age, float)
    for p in scrub.idle_peers(180.0):
        check_peer(p)


@target(300)
@given(st.one_of(mutated(link_dump), st.binary(max_size=200)))
def test_link_dump(data: bytes) -> None:
    messages = ended_well(lambda: decode_dump(data), ValueError)
    if isinstance(messages, ValueError):
        return
    links = parse_links(messages, {"eth0", "wg0"})
    for name, c in links.items():
        assert name in ("eth0", "wg0") and isinstance(c, LinkCounters)
        assert c.ifindex > 0 and c.rx_bytes >= 0 and c.tx_bytes >= 0


# --- the scrub read against a walk of every element ----------------------------------


def walk_every_element(data: bytes) -> tuple[list[PeerActivity], set[bytes]]:
    """The scrub read as it was before it skipped quiet peers: every element's attributes
    walked, each key's first element counting. Also the keys with an endpoint anywhere."""
    first: dict[bytes, PeerActivity] = {}
    with_endpoint: set[bytes] = set()
    for m in nlwire.iter_messages(data):
        if m.seq != SEQ or m.type == nlwire.NLMSG_ERROR:
            continue
        if m.type == nlwire.NLMSG_DONE:
            break
        for t, a, b in nlwire.iter_attrs(data, m.start + nlwire.GENL_HDR.size, m.end):
            if t != nlwire.WGDEVICE_A_PEERS:
                continue
            for _t, p, q in nlwire.iter_attrs(data, a, b):
                k: bytes | None = None
                endpoint, sec, nsec = False, 0, 0
                for at, x, y in nlwire.iter_attrs(data, p, q):
                    if at == nlwire.WGPEER_A_PUBLIC_KEY:
                        if y - x != KEY_LEN:
                            raise nlwire.DecodeError("key")
                        k = data[x:y]
                    elif at == nlwire.WGPEER_A_ENDPOINT:
                        endpoint = y - x >= 2 and any(data[x:y])
                    elif at == nlwire.WGPEER_A_LAST_HANDSHAKE_TIME:
                        if y - x != 16:
                            raise nlwire.DecodeError("time")
                        sec, nsec = struct.unpack_from("=qq", data, x)
                if k is None:
                    raise nlwire.DecodeError("no key")
                if endpoint:
                    with_endpoint.add(k)
                first.setdefault(k, PeerActivity(k, endpoint, handshake_age(sec, nsec, NOW)))
    return list(first.values()), with_endpoint


@target(300)
@given(kernel_dump, st.sampled_from([0.0, 180.0, 1e6]))
def test_scrub_read_agrees_with_a_walk_of_every_element(data: bytes, idle_after: float) -> None:
    """On dumps as the kernel writes them, skipping the quiet peers changes nothing."""
    activities, _ = walk_every_element(data)
    want = select_idle(activities, idle_after)
    got = idle_from_dump([data], SEQ, idle_after, NOW)
    assert [p.public_key for p in got] == want
    decoded = nlwire.decode_device(data, seq=SEQ).peers
    assert got == [decoded[k] for k in want], "with their whole configuration"
    dec = ScrubDecoder(NOW, idle_after)
    for m in nlwire.iter_messages(data):
        if m.type == FAMILY:
            dec.add(data, m.start, m.end)
    assert set(dec.activity.peers) == {a.public_key for a in activities if a.has_endpoint}


@target(300)
@given(st.one_of(mutated(kernel_dump), mutated(device_dump)), st.sampled_from([0.0, 180.0]))
def test_scrub_read_returns_only_peers_with_an_endpoint(data: bytes, idle_after: float) -> None:
    got = ended_well(
        lambda: idle_from_dump([data], SEQ, idle_after, NOW), (nlwire.DecodeError, DumpError)
    )
    walked = ended_well(lambda: walk_every_element(data), nlwire.DecodeError)
    if isinstance(got, list) and not isinstance(walked, nlwire.DecodeError):
        _, with_endpoint = walked
        for p in got:
            check_peer(p)
            assert p.public_key in with_endpoint, "a peer without an endpoint would be re-added"


# --- the link reader over a scripted socket -----------------------------------------------

link_answer = st.one_of(
    mutated(link_dump),
    st.builds(
        lambda code: struct.pack("=IHHIIi", 20, 2, 0, 1, 0, -code),
        st.sampled_from([errno.ENODEV, errno.ENODEV, errno.EPERM, 0, -5, 2**31 - 1]),
    ),
    st.binary(max_size=100),
)


@target(200)
@given(st.lists(link_answer, min_size=1, max_size=3), st.sampled_from(["eth0", "wg0", "x y"]))
def test_link_reader(answers: list[bytes], name: str) -> None:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.settimeout(0.01)  # an answer that never comes
    reader = LinkReader()
    reader._open = lambda: ours  # type: ignore[method-assign]
    try:
        for a in answers:
            kernel.send(a)
        got = ended_well(lambda: reader.read([name]), CounterError)
        if not isinstance(got, CounterError):
            assert set(got) <= {name}
            for c in got.values():
                assert isinstance(c, LinkCounters) and c.ifindex > 0
                assert 0 <= c.rx_bytes < 2**64 and 0 <= c.tx_bytes < 2**64
        else:
            assert reader._sock is None and ours.fileno() == -1, "a failed socket is dropped"
    finally:
        reader.close()
        ours.close()
        kernel.close()
