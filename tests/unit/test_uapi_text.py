"""The UAPI text formatter and parser, on literal protocol text."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.core.model import ZERO_KEY, Device, Peer, PeerTable, PeerUpdate, Plan, RecordPeers
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.text import UapiProtocolError
from tests.peerdata import key, make_peers
from tests.wgencode import format_get_reply

A, B, C, PSK = key("a", 0), key("b", 0), key("c", 0), key("psk", 0)
IP1 = AllowedIP.parse("10.8.0.2/32")
IP6 = AllowedIP.parse("fd00:8::2/128")
NET = AllowedIP.parse("172.16.0.0/12")
ZERO_HEX = "0" * 64

# A reply as wireguard-go 0.0.20220316 writes it, endpoint and counters included.
GET_REPLY = (
    f"private_key={key('priv', 0).hex()}\n"
    "listen_port=51820\n"
    f"public_key={A.hex()}\n"
    f"preshared_key={PSK.hex()}\n"
    "protocol_version=1\n"
    "endpoint=198.51.100.7:40000\n"
    "last_handshake_time_sec=1700000000\n"
    "last_handshake_time_nsec=5\n"
    "tx_bytes=123\n"
    "rx_bytes=456\n"
    "persistent_keepalive_interval=0\n"
    "allowed_ip=10.8.0.2/32\n"
    "allowed_ip=fd00:8::2/128\n"
    f"public_key={B.hex()}\n"
    f"preshared_key={ZERO_HEX}\n"
    "protocol_version=1\n"
    "last_handshake_time_sec=0\n"
    "last_handshake_time_nsec=0\n"
    "tx_bytes=0\n"
    "rx_bytes=0\n"
    "persistent_keepalive_interval=25\n"
    "errno=0\n\n"
)


def test_parse_get_reply() -> None:
    device, errno = uapi_text.parse_get_reply(GET_REPLY)
    assert errno == 0
    assert device.private_key == key("priv", 0)
    assert device.listen_port == 51820
    assert dict(device.peers) == {
        A: Peer(A, frozenset({IP1, IP6}), PSK),
        B: Peer(B, frozenset(), None),
    }


@pytest.mark.parametrize(
    ("text", "device"),
    [
        ("errno=0\n\n", Device()),
        ("listen_port=1234\nerrno=0\n\n", Device(None, 1234, {})),
        (f"private_key={ZERO_HEX}\nerrno=0\n\n", Device()),
        ("fwmark=7\nerrno=0\n\n", Device()),
    ],
)
def test_parse_device_only(text: str, device: Device) -> None:
    assert uapi_text.parse_get_reply(text) == (device, 0)


def test_parse_errno_reply() -> None:
    assert uapi_text.parse_get_reply("errno=-22\n\n") == (Device(), -22)
    assert uapi_text.parse_set_reply("errno=0\n\n") == 0
    assert uapi_text.parse_set_reply("errno=-98\n\n") == -98


@pytest.mark.parametrize(
    "text",
    [
        "",
        "errno=0\n",  # no blank line
        "listen_port=1\n\n",  # no errno
        "errno=x\n\n",
        f"public_key={A.hex()}\nnonsense\nerrno=0\n\n",
        "allowed_ip=10.0.0.0/8\nerrno=0\n\n",  # before any peer
        f"public_key={A.hex()[:-2]}\nerrno=0\n\n",
        f"public_key={'zz' * 32}\nerrno=0\n\n",
        f"public_key={A.hex()}\nallowed_ip=10.0.0.1/8\nerrno=0\n\n",  # host bits
        "listen_port=70000\nerrno=0\n\n",
    ],
)
def test_parse_rejects_malformed(text: str) -> None:
    with pytest.raises(UapiProtocolError) as e:
        uapi_text.parse_get_reply(text)
    # The message never quotes the text (which may hold keys or addresses).
    assert A.hex()[:16] not in str(e.value) and "10.0" not in str(e.value)


def test_set_reply_with_body_is_malformed() -> None:
    with pytest.raises(UapiProtocolError):
        uapi_text.parse_set_reply("listen_port=1\nerrno=0\n\n")


def test_plan_lines_order_and_fields() -> None:
    p = Plan(
        add=(Peer(A, frozenset({IP6, IP1}), PSK), Peer(B)),
        update=(
            PeerUpdate(C, allowed_ips=frozenset({NET})),
            PeerUpdate(A, change_preshared_key=True, preshared_key=None),
            PeerUpdate(B, allowed_ips=frozenset(), change_preshared_key=True, preshared_key=PSK),
        ),
        remove=(C,),
    )
    assert uapi_text.plan_lines(p) == [
        f"public_key={A.hex()}",
        f"preshared_key={PSK.hex()}",
        "replace_allowed_ips=true",
        "allowed_ip=10.8.0.2/32",
        "allowed_ip=fd00:8::2/128",
        f"public_key={B.hex()}",
        "replace_allowed_ips=true",
        f"public_key={C.hex()}",
        "update_only=true",
        "replace_allowed_ips=true",
        "allowed_ip=172.16.0.0/12",
        f"public_key={A.hex()}",
        "update_only=true",
        f"preshared_key={ZERO_HEX}",
        f"public_key={B.hex()}",
        "update_only=true",
        f"preshared_key={PSK.hex()}",
        "replace_allowed_ips=true",
        f"public_key={C.hex()}",
        "remove=true",
    ]


def test_set_request_framing() -> None:
    assert uapi_text.set_request([]) == b""
    assert uapi_text.set_request(uapi_text.plan_lines(Plan())) == b""
    assert uapi_text.set_request(uapi_text.device_lines(None, 51820)) == (
        b"set=1\nlisten_port=51820\n\n"
    )
    assert uapi_text.device_lines(PSK, None) == [f"private_key={PSK.hex()}"]


@pytest.mark.parametrize("n", [0, 1, 2, 819, 820, 1700, 3000])
def test_a_plan_is_sent_as_its_lines_in_one_request_whatever_the_batches(n: int) -> None:
    """Sizes below, around and well past one batch of lines (4,096): the same bytes."""
    peers = make_peers(n)  # every second with an IPv6 route, every third with a psk
    updates = tuple(PeerUpdate(k, None, True, None) for k in list(peers)[: n // 3])
    p = Plan(add=tuple(peers.values()), update=updates, remove=(A,) if n % 2 else ())
    lines = uapi_text.plan_lines(p)
    want = ("set=1\n" + "\n".join(lines) + "\n\n").encode() if lines else b""
    assert uapi_text.plan_request(p) == want
    assert uapi_text.set_request(iter(lines)) == want
    assert want.count(b"\n") == len(lines) + 2 * bool(want)


def test_never_replaces_all_peers() -> None:
    p = plan({A: Peer(A)}, {B: Peer(B), C: Peer(C)})
    text = uapi_text.set_request(uapi_text.plan_lines(p)).decode()
    assert "replace_peers" not in text
    assert text.endswith("remove=true\n\n")


# --- property tests -----------------------------------------------------------

keys = st.sampled_from([key("k", i) for i in range(8)])
ips = st.sampled_from(
    [AllowedIP.parse(f"10.0.0.{i}/32") for i in range(6)]
    + [AllowedIP.parse(f"fd00::{i:x}/128") for i in range(4)]
    + [NET, AllowedIP.parse("::/0"), AllowedIP.parse("0.0.0.0/0")]
)
psks = st.one_of(st.none(), st.sampled_from([key("psk", i) for i in range(3)]))


@st.composite
def peer_maps(draw: st.DrawFn) -> dict[bytes, Peer]:
    """Peer sets as a feed could give them: no allowed IP on two peers."""
    chosen = draw(st.lists(keys, unique=True, max_size=6))
    used: set[AllowedIP] = set()
    out: dict[bytes, Peer] = {}
    for k in chosen:
        mine = draw(st.frozensets(ips, max_size=4)) - used
        used |= mine
        out[k] = Peer(k, frozenset(mine), draw(psks))
    return out


@given(
    private_key=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    port=st.integers(0, 65535),
    peers=peer_maps(),
)
def test_get_reply_round_trip(
    private_key: bytes | None, port: int, peers: dict[bytes, Peer]
) -> None:
    if private_key == ZERO_KEY:
        private_key = None
    device = Device(private_key, port, peers)
    got, errno = uapi_text.parse_get_reply(format_get_reply(device))
    assert errno == 0
    assert (got.private_key, got.listen_port, dict(got.peers)) == (private_key, port, peers)


def interpret_set(peers: dict[bytes, Peer], lines: list[str]) -> dict[bytes, Peer]:
    """A model of wireguard-go's set operation (device/uapi.go), for the lines we emit."""
    state = {k: [set(p.allowed_ips), p.preshared_key] for k, p in peers.items()}
    current: bytes | None = None
    for line in lines:
        name, _, value = line.partition("=")
        if name == "public_key":
            current = bytes.fromhex(value)
            state.setdefault(current, [set(), None])
        elif current is None:
            continue
        elif name == "update_only":
            pass  # the peers we update always exist in these tests
        elif name == "remove":
            del state[current]
            current = None
        elif name == "preshared_key":
            psk = bytes.fromhex(value)
            state[current][1] = None if psk == ZERO_KEY else psk
        elif name == "replace_allowed_ips":
            state[current][0] = set()
        elif name == "allowed_ip":
            ip = AllowedIP.parse(value)
            for entry in state.values():  # an address belongs to one peer only
                entry[0].discard(ip)
            state[current][0].add(ip)
    return {k: Peer(k, frozenset(v[0]), v[1]) for k, v in state.items()}  # type: ignore[arg-type]


@settings(max_examples=300)
@given(actual=peer_maps(), desired=peer_maps())
def test_plan_text_converges(actual: dict[bytes, Peer], desired: dict[bytes, Peer]) -> None:
    lines = uapi_text.plan_lines(plan(desired, actual))
    assert interpret_set(actual, lines) == desired


# --- UapiBackend over a scripted exchange (no socket) ---------------------------


class Scripted:
    """Answers each request with the next canned reply and records what was sent."""

    def __init__(self, *replies: str) -> None:
        self.replies = list(replies)
        self.sent: list[bytes] = []

    def __call__(self, path: str, request: bytes) -> str:
        self.sent.append(request)
        return self.replies.pop(0)


def test_backend_empty_plan_sends_nothing() -> None:
    ex = Scripted()
    UapiBackend("wgx", exchange_fn=ex).apply(Plan())
    assert ex.sent == []


def test_backend_sends_one_transaction_and_maps_errno() -> None:
    ex = Scripted("errno=0\n\n", "errno=-22\n\n")
    backend = UapiBackend("wgx", exchange_fn=ex)
    p = Plan(add=(Peer(A, frozenset({IP1})), Peer(B)), remove=(C,))
    backend.apply(p)
    assert ex.sent == [uapi_text.set_request(uapi_text.plan_lines(p))]
    with pytest.raises(BackendError) as e:
        backend.apply(p)
    assert "EINVAL" in str(e.value)
    assert A.hex()[:8] not in str(e.value) and "10.8" not in str(e.value)


def test_backend_missing_socket() -> None:
    def absent(path: str, request: bytes) -> str:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(InterfaceMissing) as e:
        UapiBackend("wgx", "/run/x/wgx.sock", exchange_fn=absent).read()
    assert "/run/x" not in str(e.value)


def test_a_tables_plan_is_sent_as_the_same_peers_plan_is() -> None:
    peers = make_peers(300)  # IPv4 and IPv6 routes, a preshared key on every third
    from_table = plan(PeerTable(peers.values()), {})
    assert isinstance(from_table.add, RecordPeers)
    assert uapi_text.plan_request(from_table) == uapi_text.plan_request(plan(peers, {}))
