"""The SET_DEVICE encoder straight from packed routes: the fast path against an independent one."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.core.model import ZERO_KEY, Peer, PeerTable, Plan, RecordPeers
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP, AllowedIPs
from nodeagent.wireguard.netlink import codec as nw
from nodeagent.wireguard.netlink.codec import encode
from tests.peerdata import key, make_peers

FAMILY = 0x20
K = bytes(range(32))
PSK = b"\xaa" * 32
ROOM = nw.MAX_MESSAGE


def reference_element(key_: bytes, flags: int, psk: bytes | None, ips: AllowedIPs | None) -> bytes:
    """One peer element written attribute by attribute, routes in their packed order."""

    def nla(atype: int, payload: bytes) -> bytes:
        n = 4 + len(payload)
        return struct.pack("=HH", n, atype) + payload + bytes(-n % 4)

    body = nla(nw.WGPEER_A_PUBLIC_KEY, key_) + nla(nw.WGPEER_A_FLAGS, struct.pack("=I", flags))
    if psk is not None:
        body += nla(nw.WGPEER_A_PRESHARED_KEY, psk)
    if ips is not None:
        routes = b""
        for ip in ips:  # AllowedIPs iterates in packed order
            family = socket.AF_INET if len(ip.address) == 4 else socket.AF_INET6
            routes += nla(
                nw.NLA_F_NESTED,
                nla(nw.WGALLOWEDIP_A_CIDR_MASK, bytes([ip.cidr]))
                + nla(nw.WGALLOWEDIP_A_FAMILY, struct.pack("=H", family))
                + nla(nw.WGALLOWEDIP_A_IPADDR, ip.address),
            )
        body += nla(nw.NLA_F_NESTED | nw.WGPEER_A_ALLOWEDIPS, routes)
    return nla(nw.NLA_F_NESTED, body)


def _ip(raw: bytes, cidr: int) -> AllowedIP:
    bits = len(raw) * 8
    value = int.from_bytes(raw, "big") & ~((1 << (bits - cidr)) - 1)
    return AllowedIP(value.to_bytes(len(raw), "big"), cidr)


routes_st = st.one_of(
    st.builds(_ip, st.binary(min_size=4, max_size=4), st.integers(0, 32)),
    st.builds(_ip, st.binary(min_size=16, max_size=16), st.integers(0, 128)),
)
ops_st = st.builds(
    nw.PeerOp,
    st.binary(min_size=32, max_size=32),
    # 0x25 is "%": the template's constant bytes must be escaped.
    st.sampled_from([0, 1, 2, 4, 6, 0x25, 0x2525]),
    st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
    st.one_of(st.none(), st.builds(AllowedIPs, st.frozensets(routes_st, max_size=30))),
)


@settings(max_examples=300, deadline=None)
@given(op=ops_st)
def test_fast_and_general_paths_match_the_reference(op: nw.PeerOp) -> None:
    want = reference_element(*op)
    fast = encode._fast_element(op)
    if fast is not None:
        assert fast == want
    assert list(encode.peer_elements(op, ROOM)) == [want]
    # And through the message encoder, which picks the path.
    (msg,) = nw.encode_set_peers(FAMILY, "wg0", [op], max_message=ROOM)
    assert msg.endswith(want)


def test_common_shapes_take_the_fast_path() -> None:
    v4 = AllowedIP.parse("10.0.0.2/32")
    v6 = AllowedIP.parse("fd00::2/128")
    for ips in ([], [v4], [v6], [v4, v6], [v4, AllowedIP.parse("10.0.0.0/24"), v6]):
        for psk in (None, PSK):
            op = nw.PeerOp(K, nw.WGPEER_F_REPLACE_ALLOWEDIPS, psk, AllowedIPs(ips))
            assert encode._fast_element(op) == reference_element(*op)
    removal = nw.PeerOp(K, nw.WGPEER_F_REMOVE_ME, None, None)
    assert encode._fast_element(removal) == reference_element(*removal)
    # Many routes: the general path (which can split the peer).
    wide = AllowedIPs(AllowedIP.parse(f"fd01::{i:x}/128") for i in range(9))
    assert encode._fast_element(nw.PeerOp(K, 2, None, wide)) is None


def test_routes_go_in_packed_order_in_the_kernel_attribute_order() -> None:
    # IPv4 before IPv6 whatever the address bytes, then prefix length, then address.
    ips = [
        AllowedIP.parse("fd00::/64"),
        AllowedIP.parse("192.168.0.0/16"),
        AllowedIP.parse("10.0.0.0/8"),
        AllowedIP.parse("10.0.0.1/32"),
    ]
    (msg,) = nw.encode_set_device(FAMILY, "wg0", Plan(add=(Peer(K, frozenset(ips)),)))
    routes = msg[20 + 8 + 4 + 4 + 36 + 8 + 4 :]
    assert routes == bytes.fromhex(
        "1c000080" "0500030008000000" "0600010002000000" "080002000a000000"  # 10.0.0.0/8
        "1c000080" "0500030010000000" "0600010002000000" "08000200c0a80000"  # 192.168.0.0/16
        "1c000080" "0500030020000000" "0600010002000000" "080002000a000001"  # 10.0.0.1/32
        "28000080" "0500030040000000" "060001000a000000"
        "14000200" "fd000000000000000000000000000000"  # fd00::/64
    )  # fmt: skip
    assert nw.decode_device(msg).peers == {K: Peer(K, frozenset(ips))}


def test_same_plan_same_bytes_whatever_the_input_order() -> None:
    ips = [AllowedIP.parse(f"10.1.{i}.0/24") for i in range(5)] + [AllowedIP.parse("fd00::/8")]
    a = Plan(add=(Peer(K, ips, PSK),))
    b = Plan(add=(Peer(K, list(reversed(ips)), PSK),))
    assert nw.encode_set_device(FAMILY, "wg0", a) == nw.encode_set_device(FAMILY, "wg0", b)


def test_a_tables_plan_is_encoded_as_the_same_peers_plan_is() -> None:
    peers = make_peers(300)  # IPv4 and IPv6 routes, a preshared key on every third
    table = PeerTable(peers.values())
    from_table, from_dict = plan(table, {}), plan(peers, {})
    assert isinstance(from_table.add, RecordPeers) and isinstance(from_dict.add, tuple)
    assert nw.plan_ops(from_table) == nw.plan_ops(from_dict)
    assert nw.encode_set_device(FAMILY, "wg0", from_table) == nw.encode_set_device(
        FAMILY, "wg0", from_dict
    )


def test_bad_keys_are_refused_on_both_paths() -> None:
    ips = AllowedIPs([AllowedIP.parse("10.0.0.2/32")])
    wide = AllowedIPs(AllowedIP.parse(f"10.2.{i}.0/24") for i in range(40))
    for routes in (ips, wide, None):
        for op in (nw.PeerOp(K[:31], 2, None, routes), nw.PeerOp(K, 2, PSK[:31], routes)):
            with pytest.raises(ValueError, match="32 bytes"):
                nw.encode_set_peers(FAMILY, "wg0", [op])


def test_template_cache_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(encode, "_TEMPLATES", {})
    ips = AllowedIPs([AllowedIP.parse("10.0.0.2/32")])
    for flags in range(encode._MAX_TEMPLATES + 10):
        encode._fast_element(nw.PeerOp(K, flags, None, ips))
    assert len(encode._TEMPLATES) <= encode._MAX_TEMPLATES
    # Still right once the cache is full.
    op = nw.PeerOp(K, 0x12345, ZERO_KEY, ips)
    assert encode._fast_element(op) == reference_element(*op)


def test_many_small_peers_decode_back() -> None:
    peers = {
        key("p", i): Peer(key("p", i), [_ip(bytes([10, 0, i >> 8, i & 255]), 32)])
        for i in range(300)
    }
    msgs = nw.encode_set_device(FAMILY, "wg0", Plan(add=tuple(peers.values())), max_message=1024)
    assert nw.decode_device(b"".join(msgs)).peers == peers
