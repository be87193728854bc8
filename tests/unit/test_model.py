"""core.model's compact values: AllowedIPs (a peer's routes in one bytes), Peer's canonical form."""

from __future__ import annotations

from nodeagent.core.model import Peer, PeerUpdate
from nodeagent.core.routes import AllowedIP, AllowedIPs, allowed_ips
from tests.peerdata import key

V4 = AllowedIP.parse("10.8.0.2/32")
NET = AllowedIP.parse("172.16.0.0/12")
V6 = AllowedIP.parse("fd00:8::2/128")


def test_allowed_ips_is_canonical_whatever_the_order_and_repeats() -> None:
    a = AllowedIPs([V6, V4, NET, V4])
    b = AllowedIPs({NET, V6, V4})
    assert a == b and hash(a) == hash(b) and a.packed == b.packed
    assert len(a) == 3 and set(a) == {V4, NET, V6}
    assert list(a) == list(b)  # one order, the same for every producer
    assert V4 in a and AllowedIP.parse("10.8.0.3/32") not in a and "x" not in a
    assert AllowedIPs(a) is a
    assert a != AllowedIPs([V4]) and a != frozenset({V4, NET, V6})


def test_empty_and_one_route() -> None:
    empty = AllowedIPs()
    assert len(empty) == 0 and not empty and list(empty) == [] and empty == allowed_ips([])
    one = allowed_ips([V6])
    assert len(one) == 1 and list(one) == [V6] and one


def test_peer_keeps_its_routes_packed_whatever_it_was_given() -> None:
    k = key("model", 0)
    p = Peer(k, frozenset({V4, V6}))
    q = Peer(k, (V6, V4))
    r = Peer(k, AllowedIPs([V4, V6]))
    assert type(p.allowed_ips) is AllowedIPs and p == q == r and hash(p) == hash(q)
    assert Peer(k) == Peer(k, ()) and len(Peer(k).allowed_ips) == 0
    u = PeerUpdate(k, allowed_ips=frozenset({V4}))
    assert u.allowed_ips == allowed_ips([V4])
    assert PeerUpdate(k).allowed_ips is None


def test_nothing_of_the_routes_in_repr() -> None:
    ips = AllowedIPs([V4, V6])
    for text in (repr(ips), str(ips), repr(Peer(key("model", 1), ips))):
        assert "10.8" not in text and "fd00" not in text and "\\x" not in text


def test_from_packed_is_the_same_canonical_form() -> None:
    from nodeagent.core.routes import parse_packed_ip

    texts = ["fd00:8::2/128", "10.8.0.2/32", "172.16.0.0/12", "10.8.0.2/32"]
    for n in range(1, len(texts) + 1):
        entries = [parse_packed_ip(t) for t in texts[:n]]
        want = AllowedIPs(AllowedIP.parse(t) for t in texts[:n])
        assert AllowedIPs.from_packed(entries) == want
        assert AllowedIPs.from_packed(entries[::-1]) == want
    assert AllowedIPs.from_packed([parse_packed_ip("10.8.0.2/32")] * 2) == AllowedIPs([V4])


def test_shares_finds_a_common_route_and_never_a_straddling_substring() -> None:
    a4, b4 = AllowedIP.parse("10.0.0.1/32"), AllowedIP.parse("10.0.0.2/32")
    six = AllowedIP.parse("fd00::1/128")
    ips = AllowedIPs([a4, six])
    entries = list(ips.entries())
    assert len(entries) == 2 and b"".join(entries) == ips.packed
    assert ips.shares(frozenset(AllowedIPs([six]).entries()))
    assert not ips.shares(frozenset(AllowedIPs([b4]).entries()))
    # The tail of one route and the head of the next: a substring of the packing,
    # and no route of the peer.
    straddle = ips.packed[3:9]
    assert straddle in ips.packed and straddle not in entries
    assert not ips.shares(frozenset({straddle}))
    # Many wanted routes take the other path: the same answers.
    many = frozenset(AllowedIPs([AllowedIP.parse(f"10.9.0.{i}/32") for i in range(10)]).entries())
    assert not ips.shares(many)
    assert ips.shares(many | {entries[1]})
