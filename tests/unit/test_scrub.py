"""The scrubber's pure selection, its UAPI and netlink parsers, and the pass over a fake port."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import pytest

from nodeagent.core.idle import PeerActivity, select_idle
from nodeagent.core.model import Peer
from nodeagent.core.routes import AllowedIP
from nodeagent.privacy.scrub import scrub_once
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.idle import (
    DumpError,
    ScrubDecoder,
    _elements_to_read,
    idle_from_dump,
    readd_messages,
)
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.idle import (
    UapiScrubPort,
    endpoint_blocks,
    idle_from_reply,
    readd_lines,
)
from tests.fakes import FakeBackend
from tests.peerdata import key
from tests.wgencode import route_element

A, B, C, D = (key("scrub", i) for i in range(4))
NOW = 1_800_000_000.0


@pytest.mark.parametrize(
    ("activity", "idle"),
    [
        (PeerActivity(A, True, 200.0), True),  # quiet past the threshold, holds an IP
        (PeerActivity(A, True, 180.0), True),  # exactly at the threshold
        (PeerActivity(A, True, 179.9), False),  # a session that may be in use
        (PeerActivity(A, True, None), True),  # an endpoint but never a handshake
        (PeerActivity(A, False, 900.0), False),  # nothing to wipe
        (PeerActivity(A, False, None), False),
        (PeerActivity(A, True, -5.0), False),  # clock stepped back: treat as recent
    ],
)
def test_select_idle(activity: PeerActivity, idle: bool) -> None:
    assert select_idle([activity], 180.0) == ([A] if idle else [])


def test_select_keeps_order_and_repr_hides_key() -> None:
    acts = [PeerActivity(k, True, None) for k in (C, A, B)]
    assert select_idle(acts, 180.0) == [C, A, B]
    assert A.hex() not in repr(acts[1]) and "200" not in repr(PeerActivity(A, True, 200.0))


def keys(peers: Sequence[Peer]) -> list[bytes]:
    return [p.public_key for p in peers]


def get_reply(peers: Sequence[tuple[bytes, str | None, int]]) -> str:
    lines = [f"private_key={key('priv', 0).hex()}", "listen_port=51820"]
    for k, endpoint, sec in peers:
        lines.append(f"public_key={k.hex()}")
        lines.append(f"preshared_key={bytes(32).hex()}")
        lines.append("protocol_version=1")
        if endpoint is not None:
            lines.append(f"endpoint={endpoint}")
        lines += [f"last_handshake_time_sec={sec}", "last_handshake_time_nsec=5", "tx_bytes=9"]
        lines += ["rx_bytes=9", "persistent_keepalive_interval=0", "allowed_ip=10.0.0.1/32"]
    return "\n".join([*lines, "errno=0"]) + "\n\n"


def test_uapi_idle_from_reply() -> None:
    reply = get_reply(
        [
            (A, "192.0.2.2:51820", int(NOW) - 500),  # idle with endpoint
            (B, "[2001:db8::2]:51820", int(NOW) - 10),  # active
            (C, None, int(NOW) - 500),  # idle, endpoint already gone
            (D, "192.0.2.9:4000", 0),  # endpoint, never a handshake
        ]
    )
    assert keys(idle_from_reply(reply, 180.0, NOW)) == [A, D]
    assert keys(idle_from_reply(reply, 600.0, NOW)) == [D]
    ip = frozenset({AllowedIP.parse("10.0.0.1/32")})
    assert idle_from_reply(reply, 600.0, NOW) == [Peer(D, ip)], "with its configuration"


def test_uapi_idle_refuses_errno_and_garbage() -> None:
    with pytest.raises(ValueError, match="errno"):
        idle_from_reply("errno=19\n\n", 180.0, NOW)
    bad = get_reply([(A, "192.0.2.2:1", 5)]).replace(
        "last_handshake_time_sec=5", "last_handshake_time_sec=x"
    )
    with pytest.raises(ValueError) as e:
        idle_from_reply(bad, 180.0, NOW)
    assert "192.0.2" not in str(e.value)


def test_readd_lines_remove_then_add_each_peer() -> None:
    p = Peer(A, frozenset({AllowedIP.parse("10.0.0.2/32"), AllowedIP.parse("fd00::2/128")}), B)
    q = Peer(C, frozenset({AllowedIP.parse("10.0.0.3/32")}))
    assert readd_lines([p, q]) == [
        f"public_key={A.hex()}", "remove=true",
        f"public_key={A.hex()}", f"preshared_key={B.hex()}", "replace_allowed_ips=true",
        "allowed_ip=10.0.0.2/32", "allowed_ip=fd00::2/128",
        f"public_key={C.hex()}", "remove=true",
        f"public_key={C.hex()}", "replace_allowed_ips=true", "allowed_ip=10.0.0.3/32",
    ]  # fmt: skip


def test_uapi_port_over_a_scripted_socket() -> None:
    peer = Peer(A, frozenset({AllowedIP.parse("10.0.0.1/32")}))
    sent: list[bytes] = []

    def exch(path: str, req: bytes) -> str:
        sent.append(req)
        if req.startswith(b"get=1"):
            return get_reply([(A, "192.0.2.2:1", int(NOW) - 400), (B, "192.0.2.3:1", int(NOW))])
        return "errno=0\n\n"

    backend = UapiBackend("wgx", "/nonexistent", exchange_fn=exch)
    port = UapiScrubPort(backend, clock=lambda: NOW, exchange_fn=exch)
    assert scrub_once(port, 180.0) == 1
    assert sent[-1].startswith(b"set=1\n") and sent[-1].count(b"remove=true") == 1
    assert A.hex().encode() in sent[-1] and B.hex().encode() not in sent[-1]
    assert peer.public_key == A


# --- kernel dumps -----------------------------------------------------------------


def _attr(t: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, t) + payload + bytes((-n) % 4)


def _peer(k: bytes, endpoint: bytes | None, sec: int) -> bytes:
    body = _attr(nlwire.WGPEER_A_PUBLIC_KEY, k) + _attr(nlwire.WGPEER_A_PRESHARED_KEY, bytes(32))
    if endpoint is not None:
        body += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    body += _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, 0))
    return _attr(nlwire.NLA_F_NESTED, body)


def _dump(peers: list[bytes], seq: int = 7, flags: int = nlwire.NLM_F_MULTI) -> bytes:
    payload = nlwire.GENL_HDR.pack(0, 1, 0) + _attr(
        nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS, b"".join(peers)
    )
    msg = nlwire.NLMSG_HDR.pack(16 + len(payload), 30, flags, seq, 0) + payload
    done = nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, seq, 0) + bytes(4)
    return msg + done


SIN = struct.pack("!HH4s8x", socket.AF_INET, 51820, bytes([192, 0, 2, 2]))
SIN6 = struct.pack("!HHI16sI", socket.AF_INET6, 51820, 0, bytes(15) + b"\x02", 0)


def test_kernel_idle_from_dump() -> None:
    dump = _dump(
        [
            _peer(A, SIN, int(NOW) - 500),
            _peer(B, SIN6, int(NOW) - 5),
            _peer(C, None, int(NOW) - 500),
            _peer(D, SIN6, 0),
        ]
    )
    assert keys(idle_from_dump([dump], 7, 180.0, NOW)) == [A, D]
    assert idle_from_dump([dump], 7, 1000.0, NOW) == [Peer(D)]


def test_kernel_dump_interrupted_or_refused() -> None:
    with pytest.raises(DumpError):
        idle_from_dump(
            [_dump([_peer(A, SIN, 1)], flags=nlwire.NLM_F_MULTI | nlwire.NLM_F_DUMP_INTR)],
            7,
            1.0,
            NOW,
        )
    err = nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_ERROR, 0, 7, 0) + struct.pack("=i", -19)
    with pytest.raises(DumpError) as e:
        idle_from_dump([err], 7, 1.0, NOW)
    assert e.value.code == 19


def test_kernel_readd_messages_remove_before_add() -> None:
    p = Peer(A, frozenset({AllowedIP.parse("10.0.0.2/32")}), B)
    msgs = readd_messages(21, "wg0", [p, Peer(C)], seq=100)
    assert len(msgs) == 2, "one message, hence one transaction, per peer"
    body = msgs[0]
    flags_attr = struct.pack("=HHI", 8, nlwire.WGPEER_A_FLAGS, nlwire.WGPEER_F_REMOVE_ME)
    add_attr = struct.pack("=HHI", 8, nlwire.WGPEER_A_FLAGS, nlwire.WGPEER_F_REPLACE_ALLOWEDIPS)
    assert 0 <= body.index(flags_attr) < body.index(add_attr)
    assert body.count(A) == 2 and C not in body


# --- the pass -----------------------------------------------------------------------


class FakePort(FakeBackend):
    """The fake backend with the scrub capability: activity is scripted per peer."""

    def __init__(self) -> None:
        super().__init__()
        self.activity: dict[bytes, PeerActivity] = {}
        self.readded: list[list[Peer]] = []
        self.calls: list[str] = []

    def idle_peers(self, idle_after: float) -> list[Peer]:
        self.calls.append("idle_peers")
        # One snapshot, as a dump: activity and configuration of the same peers.
        idle = select_idle(self.activity.values(), idle_after)
        return [self.peers[k] for k in idle if k in self.peers]

    def readd(self, peers: Sequence[Peer]) -> None:
        self.calls.append("readd")
        if peers:
            self.readded.append(list(peers))
        for p in peers:
            self.activity[p.public_key] = PeerActivity(p.public_key, False, None)


def test_scrub_once_readds_idle_peers_with_their_configuration() -> None:
    port = FakePort()
    pa = Peer(A, frozenset({AllowedIP.parse("10.0.0.2/32")}), D)
    pb = Peer(B, frozenset({AllowedIP.parse("10.0.0.3/32")}))
    port.peers = {A: pa, B: pb}
    port.activity = {A: PeerActivity(A, True, 400.0), B: PeerActivity(B, True, 3.0)}
    assert scrub_once(port, 180.0) == 1
    assert port.readded == [[pa]]
    assert scrub_once(port, 180.0) == 0
    assert port.readded == [[pa]], "nothing is re-added when no peer is idle"
    assert port.calls == ["idle_peers", "readd"] * 2, "the same calls on every pass"
    assert port.reads == 0, "no second read of the configuration"


def test_the_real_backends_scrub_through_their_own_methods() -> None:
    """Scrubbing is part of the Backend protocol: no adapter, no isinstance."""
    for backend in (UapiBackend("wgx", "/nonexistent"),):
        assert callable(backend.idle_peers) and callable(backend.readd)


def test_scrub_once_logs_nothing_about_peers(caplog: pytest.LogCaptureFixture) -> None:
    port = FakePort()
    port.peers = {A: Peer(A)}
    port.activity = {A: PeerActivity(A, True, 400.0)}
    caplog.set_level("DEBUG", logger="nodeagent")
    scrub_once(port, 180.0)
    idle_text = caplog.text
    caplog.clear()
    scrub_once(port, 180.0)
    assert caplog.text == idle_text, "a pass that scrubbed logs the same as one that did not"
    assert A.hex() not in idle_text and "400" not in idle_text


# --- what a log reader or an observer of the backend sees of one pass ------------------

PA = Peer(A, frozenset({AllowedIP.parse("10.0.0.2/32"), AllowedIP.parse("fd00::2/128")}), D)
PB = Peer(B, frozenset({AllowedIP.parse("10.0.0.3/32")}))


def _full_peer(p: Peer, endpoint: bytes, sec: int) -> bytes:
    """A peer as the kernel dumps it: configuration and activity in one nest."""
    body = _attr(nlwire.WGPEER_A_PUBLIC_KEY, p.public_key)
    body += _attr(nlwire.WGPEER_A_PRESHARED_KEY, p.preshared_key or bytes(32))
    body += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    body += _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, 0))
    ips = b"".join(route_element(ip) for ip in sorted(p.allowed_ips))
    body += _attr(nlwire.NLA_F_NESTED | nlwire.WGPEER_A_ALLOWEDIPS, ips)
    return _attr(nlwire.NLA_F_NESTED, body)


class ScriptedNetlink:
    """A generic-netlink socket that answers GET_DEVICE with a fixed dump and acks SET_DEVICE."""

    def __init__(self, peers: list[bytes]) -> None:
        self.peers = peers
        self.ops: list[str] = []
        self.set_payloads: list[bytes] = []
        self._replies: list[bytes] = []

    def send(self, data: bytes) -> int:
        for m in nlwire.iter_messages(data):
            cmd = data[m.start]
            if cmd == nlwire.WG_CMD_GET_DEVICE:
                self.ops.append("get")
                self._replies.append(_dump(self.peers, seq=m.seq))
            else:
                self.ops.append("set")
                self.set_payloads.append(data[m.start : m.end])
                ack = nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_ERROR, 0, m.seq, 0) + bytes(4)
                self._replies.append(ack)
        return len(data)

    def recv_into(self, buf: bytearray, n: int) -> int:
        data = self._replies.pop(0)
        buf[: len(data)] = data
        return len(data)


def _kernel_pass(
    handshake_age: int, caplog: pytest.LogCaptureFixture
) -> tuple[int, list[str], list[tuple[str, int, str]], ScriptedNetlink]:
    from nodeagent.wireguard.netlink.backend import KernelBackend
    from nodeagent.wireguard.netlink.idle import KernelScrubPort

    sock = ScriptedNetlink(
        [_full_peer(PA, SIN, int(NOW) - handshake_age), _full_peer(PB, SIN6, int(NOW) - 5)]
    )
    backend = KernelBackend("wgscrub0")
    backend._sock, backend._family = sock, 30  # type: ignore[assignment]
    caplog.clear()
    with caplog.at_level("DEBUG", logger="nodeagent"):
        n = scrub_once(KernelScrubPort(backend, clock=lambda: NOW), 180.0)
    logs = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    return n, sock.ops, logs, sock


def test_kernel_pass_reads_and_logs_the_same_with_and_without_idle_peers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n_idle, ops_idle, logs_idle, sock = _kernel_pass(500, caplog)
    n_quiet, ops_quiet, logs_quiet, _ = _kernel_pass(5, caplog)
    assert (n_idle, n_quiet) == (1, 0)
    assert logs_idle == logs_quiet, "a log reader cannot tell a pass that scrubbed"
    # One dump a pass, idle peers or not: no conditional second read exists.
    # The only difference is the scrub itself, a write that logs nothing.
    assert ops_quiet == ["get"]
    assert ops_idle == [*ops_quiet, "set"]
    # No count, no duration: nothing in a line can grow when someone went quiet.
    assert not any(ch.isdigit() for _n, _l, m in logs_quiet for ch in m.replace("wgscrub0", ""))
    # The peer went back with its full configuration, taken from that one dump.
    (payload,) = sock.set_payloads
    assert payload.count(A) == 2 and B not in payload and D in payload
    for ip in PA.allowed_ips:
        assert ip.address in payload


def _uapi_pass(handshake_age: int, caplog: pytest.LogCaptureFixture) -> tuple[int, list[bytes]]:
    sent: list[bytes] = []
    reply = get_reply([(A, "192.0.2.2:1", int(NOW) - handshake_age), (B, "192.0.2.3:1", int(NOW))])

    def exch(path: str, req: bytes) -> str:
        sent.append(req.split(b"\n", 1)[0])
        return reply if req.startswith(b"get=1") else "errno=0\n\n"

    backend = UapiBackend("wgscrub1", "/nonexistent", exchange_fn=exch)
    caplog.clear()
    with caplog.at_level("DEBUG", logger="nodeagent"):
        n = scrub_once(UapiScrubPort(backend, clock=lambda: NOW, exchange_fn=exch), 180.0)
    return n, sent


def test_uapi_pass_reads_the_same_with_and_without_idle_peers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    n_idle, ops_idle = _uapi_pass(500, caplog)
    logs_idle = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    n_quiet, ops_quiet = _uapi_pass(5, caplog)
    logs_quiet = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert (n_idle, n_quiet) == (1, 0)
    assert ops_quiet == [b"get=1"]
    assert ops_idle == [b"get=1", b"set=1"]
    assert logs_idle == logs_quiet


# --- finding the peers with an endpoint without reading the others ------------------------


def _reference_idle(text: str, idle_after: float, now: float) -> list[bytes]:
    """What the scrub read must find, read line by line (as it was before the scan)."""
    lines = text[:-2].split("\n")[:-1]
    found: list[bytes] = []
    blocks: list[list[str]] = []
    for line in lines:
        if line.startswith("public_key="):
            blocks.append([])
        if blocks:
            blocks[-1].append(line)
    for block in blocks:
        fields = dict(line.partition("=")[::2] for line in block)
        if not fields.get("endpoint"):
            continue
        sec = int(fields.get("last_handshake_time_sec", "0"))
        nsec = int(fields.get("last_handshake_time_nsec", "0"))
        age = None if sec == nsec == 0 else now - (sec + nsec / 1e9)
        if age is None or age >= idle_after:
            k = bytes.fromhex(fields["public_key"])
            if k not in found:
                found.append(k)
    return found


def _block(k: bytes, endpoint: str | None, sec: int, where: int, extra: int = 0) -> list[str]:
    """A peer's lines as wireguard-go writes them, its endpoint line moved to ``where``."""
    lines = [
        f"preshared_key={bytes(32).hex()}",
        "protocol_version=1",
        f"last_handshake_time_sec={sec}",
        "last_handshake_time_nsec=0",
        "tx_bytes=1",
        "rx_bytes=2",
        "persistent_keepalive_interval=0",
        *(f"allowed_ip=10.1.{extra}.{i}/32" for i in range(extra)),
    ]
    if endpoint is not None:
        lines.insert(where % (len(lines) + 1), f"endpoint={endpoint}")
    return [f"public_key={k.hex()}", *lines]


@pytest.mark.parametrize("device_lines", [[], ["private_key=" + "22" * 32, "listen_port=51820"]])
@pytest.mark.parametrize("where", range(10))
def test_uapi_scan_finds_endpoints_anywhere_in_a_block(where: int, device_lines: list[str]) -> None:
    ks = [key("scan", i) for i in range(8)]
    old, new = int(NOW) - 500, int(NOW) - 5
    peers = [
        (ks[0], "192.0.2.1:1", old),  # the first peer (the reply's first line without a device)
        (ks[1], None, old),
        (ks[2], "[2001:db8::1]:51820", new),  # active: read, not idle
        (ks[3], None, 0),
        (ks[4], "192.0.2.4:4", 0),  # never a handshake
        (ks[5], "", old),  # an empty endpoint is none
        (ks[6], None, old),
        (ks[7], "192.0.2.7:7", old),  # the last peer, before the errno line
    ]
    lines = list(device_lines)
    for i, (k, ep, sec) in enumerate(peers):
        lines += _block(k, ep, sec, where + i, extra=i % 3)
    text = "\n".join([*lines, "errno=0"]) + "\n\n"
    got = idle_from_reply(text, 180.0, NOW)
    assert keys(got) == [ks[0], ks[4], ks[7]] == _reference_idle(text, 180.0, NOW)
    assert got[2] == Peer(ks[7], frozenset({AllowedIP.parse("10.1.1.0/32")}))
    assert keys(idle_from_reply(text, 1.0, NOW)) == [ks[0], ks[2], ks[4], ks[7]]


def test_uapi_scan_blocks() -> None:
    a = "\n".join(_block(A, "192.0.2.1:1", 5, 1))
    b = "\n".join(_block(B, None, 5, 1))
    c = "\n".join([*_block(C, "192.0.2.3:3", 5, 3), "endpoint=192.0.2.4:4"])  # twice
    text = "listen_port=1\nendpoint=192.0.2.9:9\n" + "\n".join([a, b, c]) + "\nerrno=0\n\n"
    first = text.index("\npublic_key=")
    end = text.rindex("\nerrno=")
    blocks = [text[x:y] for x, y in endpoint_blocks(text, first, end)]
    assert blocks == [a, c], "each block with an endpoint once, the device's line not one"
    assert list(endpoint_blocks(text, first, first)) == []


def test_uapi_scan_skips_peers_without_endpoint_and_dedups() -> None:
    bad = ["public_key=" + "zz" * 32, "last_handshake_time_sec=x", "no equals sign"]
    idle = _block(A, "192.0.2.1:1", 0, 1)
    text = "\n".join([*bad, *idle, *bad, *idle, "errno=0"]) + "\n\n"
    # Neither malformed block can be idle: it has no endpoint, so it is not read.
    assert keys(idle_from_reply(text, 180.0, NOW)) == [A], "the same key re-added once"


@pytest.mark.parametrize(
    "block",
    [
        ["public_key=" + "zz" * 32, "endpoint=192.0.2.1:1"],
        ["public_key=", "endpoint=192.0.2.1:1"],
        ["public_key=" + "11" * 31, "endpoint=192.0.2.1:1"],
        [f"public_key={A.hex()}", "endpoint=192.0.2.1:1", "no equals sign"],
        [f"public_key={A.hex()}", "endpoint=192.0.2.1:1", "last_handshake_time_nsec=-1"],
        [f"public_key={A.hex()}", "endpoint=192.0.2.1:1", "", "allowed_ip=10.0.0.1/32"],
        [f"public_key={A.hex()}", "endpoint=192.0.2.1:1", "allowed_ip=10.0.0.1/33"],
        [f"public_key={A.hex()}", "endpoint=192.0.2.1:1", "preshared_key=12"],
    ],
)
def test_uapi_scan_refuses_a_malformed_block_with_an_endpoint(block: list[str]) -> None:
    text = "\n".join([*_block(B, None, 0, 0), *block, "errno=0"]) + "\n\n"
    with pytest.raises(ValueError) as e:
        idle_from_reply(text, 180.0, NOW)
    assert "192.0.2" not in str(e.value)


@pytest.mark.parametrize(
    "text",
    [
        "listen_port=x\nerrno=0\n\n",  # the device's lines are still read
        "listen_port=x\n" + "\n".join(_block(A, None, 0, 0)) + "\nerrno=0\n\n",
        "\n" + "\n".join(_block(A, None, 0, 0)) + "\nerrno=0\n\n",  # an empty first line
        "\n".join(_block(A, None, 0, 0)) + "\nerrno=1\n\n",
        "\n".join(_block(A, None, 0, 0)) + "\nerrno=0\n",
        "\n".join(_block(A, None, 0, 0)) + "\n\n",
        "errno=0",
        "",
    ],
)
def test_uapi_scan_still_checks_the_device_and_the_ending(text: str) -> None:
    with pytest.raises(ValueError):
        idle_from_reply(text, 180.0, NOW)


def test_uapi_scan_of_an_empty_device() -> None:
    assert idle_from_reply("errno=0\n\n", 180.0, NOW) == []
    assert idle_from_reply("listen_port=1\nendpoint=192.0.2.1:1\nerrno=0\n\n", 0, NOW) == []


# --- kernel dumps: only the peers with an endpoint are recorded ----------------------


def _kernel_peer(p: Peer, endpoint: bytes | None, sec: int) -> list[bytes]:
    """A peer as the kernel dumps it (tests.wgencode's layout), split in two if it has
    more than one route: the continuation repeats only the key."""
    stats = (
        _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, 0))
        + _attr(nlwire.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, bytes(2))
        + _attr(nlwire.WGPEER_A_TX_BYTES, bytes(8))
        + _attr(nlwire.WGPEER_A_RX_BYTES, bytes(8))
        + _attr(nlwire.WGPEER_A_PROTOCOL_VERSION, struct.pack("=I", 1))
    )
    head = _attr(nlwire.WGPEER_A_PUBLIC_KEY, p.public_key)
    first = head + _attr(nlwire.WGPEER_A_PRESHARED_KEY, p.preshared_key or bytes(32)) + stats
    if endpoint is not None:
        first += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    ips = [route_element(ip) for ip in sorted(p.allowed_ips)]
    nest = nlwire.NLA_F_NESTED | nlwire.WGPEER_A_ALLOWEDIPS
    out = [_attr(nlwire.NLA_F_NESTED, first + _attr(nest, ips[0]))]
    if len(ips) > 1:
        out.append(_attr(nlwire.NLA_F_NESTED, head + _attr(nest, b"".join(ips[1:]))))
    return out


def _messages(elements: list[list[bytes]], seq: int = 7) -> list[bytes]:
    """One message per list of peer elements, then NLMSG_DONE."""
    out = []
    for batch in elements:
        payload = nlwire.GENL_HDR.pack(0, 1, 0) + _attr(
            nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS, b"".join(batch)
        )
        out.append(
            nlwire.NLMSG_HDR.pack(16 + len(payload), 30, nlwire.NLM_F_MULTI, seq, 0) + payload
        )
    out.append(nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, seq, 0) + bytes(4))
    return out


TWO = frozenset({AllowedIP.parse("10.0.0.9/32"), AllowedIP.parse("fd00::9/128")})


def test_kernel_split_peers_keep_their_first_element() -> None:
    pa, pb, pc = Peer(A, TWO, D), Peer(B, TWO), Peer(C, TWO)
    a1, a2 = _kernel_peer(pa, SIN, int(NOW) - 500)  # idle, split across the messages
    b1, b2 = _kernel_peer(pb, None, int(NOW) - 500)  # no endpoint, split
    c1, c2 = _kernel_peer(pc, SIN6, int(NOW) - 5)  # active, split
    # A continuation that (unlike the kernel's) carries an endpoint is not a first element.
    b2_with_endpoint = _attr(nlwire.NLA_F_NESTED, b2[4:] + _attr(nlwire.WGPEER_A_ENDPOINT, SIN))
    msgs = _messages([[a1], [a2, b1], [b2_with_endpoint, c1], [c2]])
    got = idle_from_dump(msgs, 7, 180.0, NOW)
    assert got == [pa], "the idle peer with both halves of its routes"
    dec = ScrubDecoder(NOW, 180.0)
    for data in msgs[:-1]:
        (m,) = nlwire.iter_messages(data)
        dec.add(data, m.start, m.end)
    assert set(dec.activity.peers) == {A, C}, "only peers with an endpoint are recorded"
    assert dec.config.device().peers.keys() == {A}, "only the idle one is decoded"


@pytest.mark.parametrize("position", range(5))
def test_kernel_endpoint_peer_found_among_quiet_ones(position: int) -> None:
    quiet = [
        Peer(key("quiet", i), frozenset({AllowedIP.parse(f"10.2.0.{i}/32")})) for i in range(4)
    ]
    elements = [e for p in quiet for e in _kernel_peer(p, None, int(NOW) - 900)]
    idle = Peer(A, frozenset({AllowedIP.parse("10.3.0.1/32")}))
    elements.insert(position, _kernel_peer(idle, SIN, int(NOW) - 900)[0])
    assert idle_from_dump(_messages([elements]), 7, 180.0, NOW) == [idle]
    nest = b"".join(elements)
    read = list(_elements_to_read(nest, 0, len(nest)))
    assert len(read) == 1, "the quiet peers are skipped by their shape"
    # An all-zero endpoint is none (as before).
    elements[position] = _kernel_peer(idle, bytes(16), int(NOW) - 900)[0]
    assert idle_from_dump(_messages([elements]), 7, 180.0, NOW) == []


@pytest.mark.parametrize("cut", [1, 4, 40, 135, 136, 139, 140, -1])
def test_kernel_quiet_element_cut_or_overlong_is_refused(cut: int) -> None:
    (element,) = _kernel_peer(Peer(B, frozenset({AllowedIP.parse("10.0.0.1/32")})), None, 0)
    # The element claims its full length but the peers nest ends ``cut`` bytes into it.
    body = element[:cut]
    payload = (
        nlwire.GENL_HDR.pack(0, 1, 0)
        + struct.pack("=HH", 4 + len(body), nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS)
        + body
    )
    msg = nlwire.NLMSG_HDR.pack(16 + len(payload), 30, nlwire.NLM_F_MULTI, 7, 0) + payload
    done = nlwire.NLMSG_HDR.pack(20, nlwire.NLMSG_DONE, nlwire.NLM_F_MULTI, 7, 0) + bytes(4)
    if len(body) < 4:
        assert idle_from_dump([msg, done], 7, 180.0, NOW) == [], "padding, as iter_attrs has it"
    else:
        with pytest.raises(nlwire.DecodeError):
            idle_from_dump([msg, done], 7, 180.0, NOW)


def test_kernel_endpoint_filling_a_quiet_shaped_element_is_read() -> None:
    """An element shaped as a quiet one whose last attribute is an endpoint, not allowed IPs."""
    (element,) = _kernel_peer(Peer(A, frozenset({AllowedIP.parse("10.0.0.1/32")})), None, 0)
    fixed = element[4:136]
    body = fixed + _attr(nlwire.WGPEER_A_ENDPOINT, SIN)
    assert idle_from_dump(_messages([[_attr(nlwire.NLA_F_NESTED, body)]]), 7, 180.0, NOW) == [
        Peer(A)
    ]
