"""The WireGuard genl codec on literal bytes: requests, dumps split mid-peer, big peers split."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.core.model import ZERO_KEY, Device, Peer, PeerUpdate, Plan
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.netlink import codec as nw
from tests.peerdata import key, make_peers, wide_peer
from tests.wgencode import encode_device_dump

FAMILY = 0x20
K = bytes(range(32))
PSK = b"\xaa" * 32

GET_WG0 = bytes.fromhex(
    "1c000000" "2000" "0103" "07000000" "00000000"  # len 28, family, REQUEST|DUMP, seq 7, pid 0
    "00010000"  # WG_CMD_GET_DEVICE, version 1
    "0800020077673000"  # WGDEVICE_A_IFNAME "wg0\0"
)  # fmt: skip

ADD_ONE = bytes.fromhex(
    "94000000" "2000" "0500" "09000000" "00000000"  # len 148, REQUEST|ACK, seq 9
    "01010000"  # WG_CMD_SET_DEVICE, version 1
    "0800020077673000"  # IFNAME "wg0"
    "78000880"  # WGDEVICE_A_PEERS | NLA_F_NESTED, 120 bytes
    "74000080"  # peer element: type 0 | NLA_F_NESTED
    "24000100" + K.hex() +  # WGPEER_A_PUBLIC_KEY
    "0800030002000000"  # WGPEER_A_FLAGS = REPLACE_ALLOWEDIPS
    "24000200" + PSK.hex() +  # WGPEER_A_PRESHARED_KEY
    "20000980"  # WGPEER_A_ALLOWEDIPS | NLA_F_NESTED
    "1c000080"  # allowed IP element
    "0500030020000000"  # CIDR_MASK 32
    "0600010002000000"  # FAMILY AF_INET
    "080002000a000002"  # IPADDR 10.0.0.2
)  # fmt: skip

REMOVE_ONE = bytes.fromhex(
    "50000000" "2000" "0500" "09000000" "00000000"
    "01010000" "0800020077673000"
    "34000880" "30000080"
    "24000100" + K.hex() +
    "0800030001000000"  # WGPEER_A_FLAGS = REMOVE_ME
)  # fmt: skip


def attrs(buf: bytes, pos: int, end: int) -> list[tuple[int, bytes]]:
    """A plain TLV walk, independent of the codec under test."""
    out = []
    while pos + 4 <= end:
        n, t = struct.unpack_from("=HH", buf, pos)
        out.append((t, buf[pos + 4 : pos + n]))
        pos += (n + 3) & ~3
    return out


def peer_elements(msg: bytes) -> list[dict[int, bytes]]:
    """The peer elements of one SET_DEVICE message, as {attribute type: payload}."""
    top = attrs(msg, 20, len(msg))
    (peers,) = [p for t, p in top if t == nw.NLA_F_NESTED | nw.WGDEVICE_A_PEERS]
    return [{t & 0x3FFF: p for t, p in attrs(e, 0, len(e))} for _, e in attrs(peers, 0, len(peers))]


def ips_of(element: dict[int, bytes]) -> list[AllowedIP]:
    out = []
    for _, e in attrs(element[nw.WGPEER_A_ALLOWEDIPS], 0, len(element[nw.WGPEER_A_ALLOWEDIPS])):
        a = dict(attrs(e, 0, len(e)))
        out.append(AllowedIP(a[nw.WGALLOWEDIP_A_IPADDR], a[nw.WGALLOWEDIP_A_CIDR_MASK][0]))
    return out


@pytest.mark.parametrize(
    ("encoded", "expected"),
    [
        (nw.encode_get_device(FAMILY, "wg0", seq=7), GET_WG0),
        (
            nw.encode_set_device(
                FAMILY,
                "wg0",
                Plan(add=(Peer(K, frozenset({AllowedIP.parse("10.0.0.2/32")}), PSK),)),
                seq=9,
            ),
            [ADD_ONE],
        ),
        (nw.encode_set_device(FAMILY, "wg0", Plan(remove=(K,)), seq=9), [REMOVE_ONE]),
        (nw.encode_set_device(FAMILY, "wg0", Plan()), []),
    ],
)
def test_literal_requests(encoded: object, expected: object) -> None:
    assert encoded == expected


def test_set_message_decodes_back_to_its_peers() -> None:
    peer = Peer(K, frozenset({AllowedIP.parse("10.0.0.2/32")}), PSK)
    assert nw.decode_device(ADD_ONE).peers == {K: peer}


def test_update_sends_only_what_differs_and_removals_go_last() -> None:
    a, b, c = key("u", 1), key("u", 2), key("u", 3)
    plan = Plan(
        add=(Peer(c),),
        update=(
            PeerUpdate(a, change_preshared_key=True, preshared_key=None),
            PeerUpdate(b, allowed_ips=frozenset()),
        ),
        remove=(K,),
    )
    (msg,) = nw.encode_set_device(FAMILY, "wg0", plan)
    els = peer_elements(msg)
    assert [e[nw.WGPEER_A_PUBLIC_KEY] for e in els] == [c, a, b, K]
    flags = [struct.unpack("=I", e[nw.WGPEER_A_FLAGS])[0] for e in els]
    assert flags == [
        nw.WGPEER_F_REPLACE_ALLOWEDIPS,
        nw.WGPEER_F_UPDATE_ONLY,
        nw.WGPEER_F_UPDATE_ONLY | nw.WGPEER_F_REPLACE_ALLOWEDIPS,
        nw.WGPEER_F_REMOVE_ME,
    ]
    # Removing a preshared key is 32 zero bytes; an unchanged one is not sent at all.
    assert els[1][nw.WGPEER_A_PRESHARED_KEY] == ZERO_KEY
    assert nw.WGPEER_A_ALLOWEDIPS not in els[1] and nw.WGPEER_A_PRESHARED_KEY not in els[2]
    # Clearing all allowed IPs: REPLACE with an empty list.
    assert els[2][nw.WGPEER_A_ALLOWEDIPS] == b""


def test_wide_peer_is_split_across_set_messages() -> None:
    wide = wide_peer(300)
    msgs = nw.encode_set_device(FAMILY, "wg0", Plan(add=(wide,)), max_message=2048)
    assert len(msgs) > 3 and all(len(m) <= 2048 for m in msgs)
    els = [e for m in msgs for e in peer_elements(m)]
    assert all(e[nw.WGPEER_A_PUBLIC_KEY] == wide.public_key for e in els)
    first, *rest = els
    assert struct.unpack("=I", first[nw.WGPEER_A_FLAGS])[0] == nw.WGPEER_F_REPLACE_ALLOWEDIPS
    assert first[nw.WGPEER_A_PRESHARED_KEY] == wide.preshared_key
    for e in rest:  # continuations append: no REPLACE, no preshared key
        assert struct.unpack("=I", e[nw.WGPEER_A_FLAGS])[0] == 0
        assert nw.WGPEER_A_PRESHARED_KEY not in e
    got = [ip for e in els for ip in ips_of(e)]
    assert len(got) == 300 and set(got) == set(wide.allowed_ips)
    # And the decoder, merging consecutive elements of one key, sees the whole peer.
    assert nw.decode_device(b"".join(msgs)).peers == {wide.public_key: wide}


def test_split_update_keeps_update_only() -> None:
    wide = wide_peer(300)
    upd = PeerUpdate(wide.public_key, allowed_ips=wide.allowed_ips)
    msgs = nw.encode_set_device(FAMILY, "wg0", Plan(update=(upd,)), max_message=2048)
    flags = [struct.unpack("=I", e[nw.WGPEER_A_FLAGS])[0] for m in msgs for e in peer_elements(m)]
    assert flags[0] == nw.WGPEER_F_UPDATE_ONLY | nw.WGPEER_F_REPLACE_ALLOWEDIPS
    assert set(flags[1:]) == {nw.WGPEER_F_UPDATE_ONLY}


def test_many_peers_a_message_within_limits() -> None:
    peers = make_peers(5000)
    for size in (4096, nw.DEFAULT_MESSAGE, nw.MAX_MESSAGE):
        msgs = nw.encode_set_device(
            FAMILY, "wg0", Plan(add=tuple(peers.values())), max_message=size
        )
        assert all(len(m) <= size for m in msgs)
        # The PEERS nest length is a u16: it must not wrap.
        for m in msgs:
            nest = [n for n, t in [struct.unpack_from("=HH", m, 28)] if t == 0x8008]
            assert nest and nest[0] == len(m) - 28
        assert sum(len(peer_elements(m)) for m in msgs) == 5000
        assert [struct.unpack_from("=I", m, 8)[0] for m in msgs] == list(range(1, len(msgs) + 1))


def test_dump_split_mid_peer_merges() -> None:
    wide = wide_peer(300)
    small = make_peers(40)
    device = Device(key("priv", 1), 51820, {**small, wide.public_key: wide})
    dump = encode_device_dump(FAMILY, device, max_message=4096)
    msgs = list(nw.iter_messages(dump))
    assert len(msgs) > 4 and msgs[-1].type == nw.NLMSG_DONE
    # Some message starts with a continuation of the wide peer: same key, only allowed IPs.
    starts = []
    for m in msgs[1:-1]:
        els = peer_elements(dump[m.start - 16 : m.end])
        starts.append(set(els[0]))
    assert {nw.WGPEER_A_PUBLIC_KEY, nw.WGPEER_A_ALLOWEDIPS} in starts
    assert nw.decode_device(dump) == device


def test_decoder_takes_literal_kernel_reply() -> None:
    # A kernel-shaped reply: device port, one peer with zero psk and statistics, then DONE.
    peer = (
        "24000100" + K.hex() + "24000200" + "00" * 32
        + "14000600" + "00" * 16 + "06000500" + "00000000"
        + "0c000800" + "00" * 8 + "0c000700" + "00" * 8 + "08000a00" + "01000000"
        + "2c000980"
        + "28000080" "0500030040000000" "060001000a000000"
        + "14000200" "fd000000000000000000000000000000"
    )  # fmt: skip
    element = f"{4 + len(peer) // 2:04x}"
    element = element[2:] + element[:2] + "0080" + peer
    peers = f"{4 + len(element) // 2:04x}"
    peers = peers[2:] + peers[:2] + "0880" + element
    body = "00010000" + "0600060020ca0000" + peers
    length = 16 + len(body) // 2
    msg = struct.pack("=IHHII", length, FAMILY, nw.NLM_F_MULTI, 3, 0) + bytes.fromhex(body)
    done = struct.pack("=IHHII", 20, nw.NLMSG_DONE, nw.NLM_F_MULTI, 3, 0) + bytes(4)
    dev = nw.decode_device(msg + done, seq=3)
    assert dev.listen_port == 51744 and dev.private_key is None
    assert dev.peers == {K: Peer(K, frozenset({AllowedIP.parse("fd00::/64")}), None)}


def test_error_and_interrupt() -> None:
    err = struct.pack("=IHHII", 36, nw.NLMSG_ERROR, 0, 5, 0) + struct.pack("=i", -19) + bytes(16)
    (m,) = nw.iter_messages(err)
    assert nw.error_code(err, m) == 19
    ack = struct.pack("=IHHII", 36, nw.NLMSG_ERROR, 0, 5, 0) + bytes(20)
    assert nw.error_code(ack, next(nw.iter_messages(ack))) == 0
    with pytest.raises(nw.DecodeError):
        nw.decode_device(err)
    dump = encode_device_dump(FAMILY, Device(None, 1, make_peers(3)), interrupted=True)
    with pytest.raises(nw.DecodeError, match="interrupted"):
        nw.decode_device(dump)
    with pytest.raises(nw.DecodeError):
        list(nw.iter_messages(err[:30]))


def test_error_texts_carry_no_secrets() -> None:
    bad = encode_device_dump(FAMILY, Device(None, 1, make_peers(3)))
    broken = bad[:32] + b"\xff\xff" + bad[34:]  # the first peer's length
    with pytest.raises(nw.DecodeError) as e:
        nw.decode_device(broken)
    assert all(p.public_key.hex() not in str(e.value) for p in make_peers(3).values())


def _ip(family: int, raw: bytes, cidr: int) -> AllowedIP:
    bits = len(raw) * 8
    value = int.from_bytes(raw, "big") & ~((1 << (bits - cidr)) - 1)
    return AllowedIP(value.to_bytes(len(raw), "big"), cidr)


allowed_ips = st.one_of(
    st.builds(_ip, st.just(socket.AF_INET), st.binary(min_size=4, max_size=4), st.integers(0, 32)),
    st.builds(
        _ip, st.just(socket.AF_INET6), st.binary(min_size=16, max_size=16), st.integers(0, 128)
    ),
)
peers_st = st.dictionaries(
    st.binary(min_size=32, max_size=32),
    st.tuples(
        st.frozensets(allowed_ips, max_size=60),
        st.one_of(st.none(), st.binary(min_size=32, max_size=32).filter(lambda b: any(b))),
    ),
    max_size=30,
)


@settings(max_examples=150, deadline=None)
@given(
    peers=peers_st,
    port=st.integers(0, 65535),
    size=st.integers(1024, nw.MAX_MESSAGE),
    priv=st.one_of(st.none(), st.binary(min_size=32, max_size=32).filter(lambda b: any(b))),
)
def test_round_trip(
    peers: dict[bytes, tuple[frozenset[AllowedIP], bytes | None]],
    port: int,
    size: int,
    priv: bytes | None,
) -> None:
    want = {k: Peer(k, ips, psk) for k, (ips, psk) in peers.items()}
    device = Device(priv, port, want)
    assert nw.decode_device(encode_device_dump(FAMILY, device, max_message=size)) == device
    msgs = nw.encode_set_device(FAMILY, "wg7", Plan(add=tuple(want.values())), max_message=size)
    assert all(len(m) <= size for m in msgs)
    assert nw.decode_device(b"".join(msgs)).peers == want
