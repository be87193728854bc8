"""The scrubber's pure selection, its UAPI and netlink parsers, and the pass over a fake port."""

from __future__ import annotations

import socket
import struct
from collections.abc import Sequence

import pytest

from nodeagent.core.idle import PeerActivity, select_idle
from nodeagent.core.model import AllowedIP, Peer
from nodeagent.privacy.scrub import scrub_once
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.idle import DumpError, idle_from_dump, readd_messages
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.idle import UapiScrubPort, idle_from_reply, readd_lines
from tests.fakes import FakeBackend
from tests.peerdata import key

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


def _allowed(ip: AllowedIP) -> bytes:
    return _attr(
        nlwire.NLA_F_NESTED,
        _attr(nlwire.WGALLOWEDIP_A_FAMILY, struct.pack("=H", ip.family))
        + _attr(nlwire.WGALLOWEDIP_A_IPADDR, ip.address)
        + _attr(nlwire.WGALLOWEDIP_A_CIDR_MASK, bytes([ip.cidr])),
    )


def _full_peer(p: Peer, endpoint: bytes, sec: int) -> bytes:
    """A peer as the kernel dumps it: configuration and activity in one nest."""
    body = _attr(nlwire.WGPEER_A_PUBLIC_KEY, p.public_key)
    body += _attr(nlwire.WGPEER_A_PRESHARED_KEY, p.preshared_key or bytes(32))
    body += _attr(nlwire.WGPEER_A_ENDPOINT, endpoint)
    body += _attr(nlwire.WGPEER_A_LAST_HANDSHAKE_TIME, struct.pack("=qq", sec, 0))
    ips = b"".join(_allowed(ip) for ip in sorted(p.allowed_ips))
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
