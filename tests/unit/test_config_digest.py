"""The configuration digests of a wireguard-go ``get=1`` reply and of a kernel GET_DEVICE dump.

What they must do: change with any peer's key, preshared key or routes, and
with the device's key or port; stay the same over endpoints, handshake times
and byte counts, over the order in which peers are listed, and (kernel) over
where the kernel's buffers split a peer; be the digest of the very reply a
read decodes; end a malformed reply in the parser's own error.
"""

from __future__ import annotations

import random
import socket
import struct

import pytest

from nodeagent.core.model import ZERO_KEY, Device, Peer, PeerTable
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.netlink import codec as nw
from nodeagent.wireguard.uapi import text as uapi_text
from tests.peerdata import key, make_peers, v4, wide_peer
from tests.unit.test_uapi_text import GET_REPLY
from tests.wgencode import KERNEL_STATS, encode_device_dump, format_get_reply

FAMILY = 0x1B
PRIV = key("priv", 0)


def base_device(n: int = 30) -> Device:
    peers = make_peers(n)
    wide = wide_peer(120)
    return Device(PRIV, 51820, {**peers, wide.public_key: wide})


def variants(dev: Device) -> dict[str, Device]:
    """``dev`` with one thing the agent configures changed, for each kind of change."""
    keys = list(dev.peers)
    k0, k1, k2 = keys[:3]
    p1, p2 = dev.peers[k1], dev.peers[k2]
    ip = AllowedIP.parse("10.99.0.1/32")
    return {
        "peer removed": Device(PRIV, 51820, {k: p for k, p in dev.peers.items() if k != k0}),
        "peer added": Device(PRIV, 51820, {**dev.peers, key("new", 1): Peer(key("new", 1))}),
        "route added": Device(
            PRIV, 51820, {**dev.peers, k1: Peer(k1, (*p1.allowed_ips, ip), p1.preshared_key)}
        ),
        "route moved": Device(
            PRIV,
            51820,
            {
                **dev.peers,
                k1: Peer(k1, (), p1.preshared_key),
                k2: Peer(k2, (*p2.allowed_ips, *p1.allowed_ips), p2.preshared_key),
            },
        ),
        "psk changed": Device(
            PRIV, 51820, {**dev.peers, k1: Peer(k1, p1.allowed_ips, key("other-psk", 1))}
        ),
        "psk removed": Device(
            PRIV,
            51820,
            {**dev.peers, k0: Peer(k0, dev.peers[k0].allowed_ips, None)},
        ),
        "port": Device(PRIV, 51821, dev.peers),
        "private key": Device(key("priv", 2), 51820, dev.peers),
    }


def shuffled(dev: Device, seed: int) -> Device:
    items = list(dev.peers.items())
    random.Random(seed).shuffle(items)
    return Device(dev.private_key, dev.listen_port, dict(items))


# --- UAPI ------------------------------------------------------------------------------


def uapi_digest(text: str) -> int:
    digest, errno = uapi_text.reply_digest(text)
    assert errno == 0
    return digest


def with_activity(text: str, seed: int) -> str:
    """``text`` with endpoints, handshake times and counters as a busy wireguard-go's."""
    rng = random.Random(seed)
    out: list[str] = []
    for line in text.split("\n"):
        name, _, _ = line.partition("=")
        if name == "protocol_version" and rng.random() < 0.7:
            out.append(line)
            out.append(f"endpoint=198.51.100.{rng.randrange(256)}:{rng.randrange(1, 65536)}")
            continue
        if name in ("last_handshake_time_sec", "tx_bytes", "rx_bytes"):
            line = f"{name}={rng.randrange(1 << 40)}"
        elif name == "last_handshake_time_nsec":
            line = f"{name}={rng.randrange(10**9)}"
        out.append(line)
    return "\n".join(out)


def test_uapi_digest_ignores_activity_and_order() -> None:
    dev = base_device()
    digest = uapi_digest(format_get_reply(dev))
    for seed in range(3):
        text = with_activity(format_get_reply(shuffled(dev, seed)), seed)
        assert text != format_get_reply(dev)
        assert uapi_digest(text) == digest
        got, _ = uapi_text.parse_get_reply(text)
        assert got == dev and got.digest == digest


def boringtun_layout(text: str, seed: int) -> str:
    """``text`` (wireguard-go's) as boringtun lays a reply out: no protocol version, the
    activity after the allowed IPs, received bytes before sent; busy, by ``seed``."""
    rng = random.Random(seed)
    out: list[str] = []
    activity: list[str] = []
    for line in text.split("\n"):
        name, _, _ = line.partition("=")
        if name in ("public_key", "errno") and activity:
            out += activity
            activity = []
        if name == "public_key":
            busy = rng.random() < 0.5
            activity = [f"endpoint=203.0.113.{rng.randrange(256)}:51820"] if busy else []
            activity += [f"{n}={rng.randrange(1 << 32) if busy else 0}" for n in VOLATILE]
        if name != "protocol_version" and name not in VOLATILE:
            out.append(line)
    return "\n".join(out)


VOLATILE = ("last_handshake_time_sec", "last_handshake_time_nsec", "rx_bytes", "tx_bytes")


def test_uapi_digest_ignores_activity_in_another_daemons_layout() -> None:
    """Not wireguard-go's run of activity lines: they are cut out wherever they stand."""
    dev = base_device()
    text = boringtun_layout(format_get_reply(dev), 0)
    assert "protocol_version" not in text and "\nrx_bytes=0\ntx_bytes=0\n" in text
    digest = uapi_digest(text)
    for seed in range(1, 4):
        busy = boringtun_layout(format_get_reply(shuffled(dev, seed)), seed)
        assert "endpoint=" in busy and uapi_digest(busy) == digest
        assert uapi_text.parse_get_reply(busy)[0] == dev
    changed = variants(dev)["port"]
    assert uapi_digest(boringtun_layout(format_get_reply(changed), 0)) != digest


def test_uapi_digest_follows_every_configured_field() -> None:
    dev = base_device()
    seen = {uapi_digest(format_get_reply(dev)): "base"}
    for what, changed in variants(dev).items():
        d = uapi_digest(format_get_reply(changed))
        assert d not in seen, (what, seen.get(d))
        seen[d] = what


def test_uapi_digest_of_literal_reply_and_without_device_lines() -> None:
    digest = uapi_digest(GET_REPLY)
    device, _ = uapi_text.parse_get_reply(GET_REPLY)
    assert device.digest == digest
    # No device lines at all: the first peer's piece is cut like any other.
    dev = Device(None, 0, make_peers(5))
    assert format_get_reply(dev).startswith("public_key=")
    assert uapi_digest(format_get_reply(dev)) == uapi_digest(format_get_reply(shuffled(dev, 1)))
    assert uapi_digest("errno=0\n\n") == uapi_digest(format_get_reply(Device()))
    # A read-back of such a reply counts its first peer too, so its digest vouches.
    read, _ = uapi_text.parse_get_reply(format_get_reply(dev))
    assert read == dev and read.digest == uapi_digest(format_get_reply(dev))


def test_uapi_digest_errno_and_malformed_replies() -> None:
    assert uapi_text.reply_digest("errno=2\n\n") == (0, 2)
    for bad in ("", "errno=0\n", "public_key=00\n\n", "errno=x\n\n", "errno=" + "9" * 30 + "\n\n"):
        with pytest.raises(uapi_text.UapiProtocolError):
            uapi_text.reply_digest(bad)


def test_uapi_read_has_no_digest_when_a_key_is_listed_twice() -> None:
    a, b = key("twice", 1), key("twice", 2)
    one = format_get_reply(Device(None, 0, {a: Peer(a, (v4(1),)), b: Peer(b)}))
    lines = one.split("\n")
    # The first peer again, with other routes, after the second: the parser keeps the last.
    again = [f"public_key={a.hex()}", f"preshared_key={ZERO_KEY.hex()}", f"allowed_ip={v4(2)}"]
    text = "\n".join(lines[:-3] + again + lines[-3:])
    dev, _ = uapi_text.parse_get_reply(text)
    assert len(dev.peers) == 2 and dev.digest is None


# --- kernel dumps ---------------------------------------------------------------------


def dump_digest(dump: bytes) -> int | None:
    dec = nw.DigestDecoder()
    for m in nw.iter_messages(dump):
        if m.type == FAMILY:
            dec.add(dump, m.start, m.end)
    return dec.digest()


def read_device(dump: bytes) -> Device:
    dec = nw.ReadDecoder()
    for m in nw.iter_messages(dump):
        if m.type == FAMILY:
            dec.add(dump, m.start, m.end)
    return dec.device()


def _attr(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + bytes((-n) % 4)


SIN = struct.pack("!HH4s8x", socket.AF_INET, 51820, bytes([192, 0, 2, 2]))
SIN6 = struct.pack("!HHI16sI", socket.AF_INET6, 51820, 0, bytes(15) + b"\x02", 0)


def kernel_peer(p: Peer, endpoint: bytes | None, stats: int) -> bytes:
    """A peer element exactly as the kernel's get_peer writes it, endpoint and all."""
    body = _attr(nw.WGPEER_A_PUBLIC_KEY, p.public_key)
    body += _attr(nw.WGPEER_A_PRESHARED_KEY, p.preshared_key or ZERO_KEY)
    body += _attr(nw.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", stats, stats % 10**9))
    body += _attr(nw.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, struct.pack("=H", 0))
    body += _attr(nw.WGPEER_A_TX_BYTES, struct.pack("=Q", stats * 3))
    body += _attr(nw.WGPEER_A_RX_BYTES, struct.pack("=Q", stats * 5))
    body += _attr(nw.WGPEER_A_PROTOCOL_VERSION, struct.pack("=I", 1))
    if endpoint is not None:
        body += _attr(nw.WGPEER_A_ENDPOINT, endpoint)
    if p.allowed_ips:
        ips = b"".join(
            _attr(
                nw.NLA_F_NESTED,
                _attr(nw.WGALLOWEDIP_A_CIDR_MASK, bytes([ip.cidr]))
                + _attr(nw.WGALLOWEDIP_A_FAMILY, struct.pack("=H", ip.family))
                + _attr(nw.WGALLOWEDIP_A_IPADDR, ip.address),
            )
            for ip in p.allowed_ips
        )
        body += _attr(nw.NLA_F_NESTED | nw.WGPEER_A_ALLOWEDIPS, ips)
    return _attr(nw.NLA_F_NESTED, body)


def active_dump(dev: Device, seed: int) -> bytes:
    """One message holding every peer, a random half of them with an endpoint and activity."""
    rng = random.Random(seed)
    elements = b"".join(
        kernel_peer(p, rng.choice([None, SIN, SIN6]), rng.randrange(1, 1 << 40))
        for p in dev.peers.values()
    )
    payload = nw.GENL_HDR.pack(0, 1, 0) + _attr(nw.WGDEVICE_A_LISTEN_PORT, struct.pack("=H", 51820))
    payload += _attr(nw.WGDEVICE_A_PRIVATE_KEY, PRIV)
    payload += _attr(nw.NLA_F_NESTED | nw.WGDEVICE_A_PEERS, elements)
    return nw.NLMSG_HDR.pack(16 + len(payload), FAMILY, nw.NLM_F_MULTI, 1, 0) + payload


def test_kernel_digest_ignores_where_the_dump_splits_and_the_peer_order() -> None:
    dev = base_device()
    digest = dump_digest(encode_device_dump(FAMILY, dev, max_message=65000))
    assert digest is not None
    for size in (512, 700, 1500, 4096):
        dump = encode_device_dump(FAMILY, shuffled(dev, size), max_message=size)
        assert len(list(nw.iter_messages(dump))) > 2
        assert dump_digest(dump) == digest
        got = read_device(dump)
        assert got == dev and got.digest == digest
        # Held as records, no Peer made (a wide peer's routes split over messages, merged).
        assert isinstance(got.peers, PeerTable)


def test_kernel_digest_ignores_activity_and_takes_the_fast_path() -> None:
    dev = Device(PRIV, 51820, make_peers(40))  # no peer wider than the message
    digest = dump_digest(encode_device_dump(FAMILY, dev, max_message=65000))
    for seed in range(3):
        dump = active_dump(shuffled(dev, seed), seed)
        assert dump_digest(dump) == digest
        assert read_device(dump).digest == digest


def test_kernel_digest_is_the_same_off_the_fast_path() -> None:
    dev = Device(PRIV, 51820, make_peers(20))
    digest = dump_digest(encode_device_dump(FAMILY, dev, max_message=65000))
    # The keys after the statistics: the fast path does not apply.
    fast = active_dump(dev, 3)
    slow = fast.replace(KERNEL_STATS[:4], b"\x14\x00\x0b\x00")  # an unknown attribute type
    assert slow != fast
    assert dump_digest(slow) == digest


def test_kernel_digest_follows_every_configured_field() -> None:
    dev = base_device()
    seen = {dump_digest(encode_device_dump(FAMILY, dev, max_message=1500)): "base"}
    for what, changed in variants(dev).items():
        d = dump_digest(encode_device_dump(FAMILY, changed, max_message=1500))
        assert d is not None and d not in seen, (what, seen.get(d))
        seen[d] = what


def test_kernel_read_has_no_digest_when_a_key_is_listed_twice() -> None:
    a, b = key("twice", 1), key("twice", 2)
    first = Device(None, 0, {a: Peer(a, (v4(1),)), b: Peer(b)})
    again = Device(None, 0, {a: Peer(a, (v4(2),))})
    d1 = encode_device_dump(FAMILY, first, max_message=4096)
    d2 = encode_device_dump(FAMILY, again, max_message=4096)
    m1, m2 = next(nw.iter_messages(d1)), next(nw.iter_messages(d2))
    dev = read_device(d1[: m1.end] + d2[m2.start - 16 : m2.end])
    assert dev.peers == {a: Peer(a, (v4(2),)), b: Peer(b)} and dev.digest is None


def test_kernel_digest_malformed_dump_is_a_decode_error() -> None:
    dump = encode_device_dump(FAMILY, Device(PRIV, 51820, make_peers(3)), max_message=4096)
    (m, _done) = nw.iter_messages(dump)
    for cut in (m.start + 2, m.start + 40, m.end - 3):
        with pytest.raises(nw.DecodeError):
            nw.DigestDecoder().add(dump[:cut], m.start, cut)
