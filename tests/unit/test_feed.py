"""Feed validation: all-or-nothing, and error messages that quote no value."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from nodeagent.core.model import PeerTable, format_key
from nodeagent.core.routes import AllowedIP, allowed_ips
from nodeagent.feed.peers import parse_peer, peer_item
from nodeagent.feed.snapshot import FeedError, parse_snapshot
from tests.peerdata import key

K1, K2 = format_key(key("f", 1)), format_key(key("f", 2))
PSK = format_key(key("fpsk", 1))


def doc(peers: list[dict[str, Any]], users: list[dict[str, Any]] | None = None) -> str:
    d: dict[str, Any] = {"version": "v1", "full": True, "wireguard": {"wg0": {"peers": peers}}}
    if users is not None:
        d["openvpn"] = {"users": users}
    return json.dumps(d)


GOOD_USER = {"username": "u48151623", "password_hash": "scrypt$16384$8$1$c2FsdA==$aGFzaA=="}


def test_valid_snapshot() -> None:
    state = parse_snapshot(
        doc(
            [
                {"public_key": K1, "allowed_ips": ["10.8.0.2/32", "fd00:8::2/128"]},
                {"public_key": K2, "preshared_key": PSK, "expires_at": "2027-01-01T00:00:00Z"},
            ],
            [GOOD_USER],
        )
    )
    wg0 = state.wireguard["wg0"]
    assert state.version == "v1" and len(wg0.peers) == 2
    assert wg0.peers[key("f", 1)].allowed_ips == allowed_ips(
        {
            AllowedIP.parse("10.8.0.2/32"),
            AllowedIP.parse("fd00:8::2/128"),
        }
    )
    assert wg0.peers[key("f", 2)].preshared_key == key("fpsk", 1)
    assert wg0.expires[key("f", 2)] == datetime(2027, 1, 1, tzinfo=UTC)
    assert list(state.users) == ["u48151623"]


def test_expired_peers_are_not_active() -> None:
    state = parse_snapshot(
        doc(
            [
                {"public_key": K1, "expires_at": "2026-01-01T00:00:00Z"},
                {"public_key": K2, "expires_at": "2027-01-01T00:00:00+00:00"},
            ]
        )
    )
    now = datetime(2026, 6, 1, tzinfo=UTC)
    assert list(state.wireguard["wg0"].active(now)) == [key("f", 2)]
    assert state.wireguard["wg0"].next_expiry(now) == datetime(2027, 1, 1, tzinfo=UTC)


def test_peers_read_in_passes_are_each_item_read_alone() -> None:
    """The flat buffer between the passes keeps each peer's fields, order and expiry apart."""
    items: list[dict[str, Any]] = []
    for i in range(40):
        item: dict[str, Any] = {
            "public_key": format_key(key("two", i)),
            "allowed_ips": [f"10.9.{i}.{j}/32" for j in range(i % 4)]
            + ([f"fd00:9::{i:x}/128"] if i % 5 == 0 else []),
        }
        if i % 3 == 0:
            item["preshared_key"] = format_key(key("twopsk", i))
        if i % 4 == 1:
            zone = ("Z", "+02:00", "-09:30")[i % 3]
            item["expires_at"] = f"2027-01-{1 + i % 28:02d}T00:00:00.{i:06d}{zone}"
        items.append(item)
    wg0 = parse_snapshot(doc(items)).wireguard["wg0"]
    alone = [parse_peer("x", item) for item in items]
    assert list(wg0.peers.values()) == [peer for peer, _ in alone]
    assert wg0.expires == {peer.public_key: t for peer, t in alone if t is not None}
    assert len(wg0.expires) == 10
    assert sum(p.preshared_key is not None for p in wg0.peers.values()) == 14


def test_a_new_snapshot_shares_the_unchanged_peers_of_the_state_it_replaces() -> None:
    """Equal peers keep the held records; a changed route or preshared key makes a new one."""
    items = [
        {"public_key": format_key(key("s", i)), "allowed_ips": [f"10.7.0.{i}/32"]} for i in range(6)
    ]
    before = parse_snapshot(doc(items))
    items[1]["allowed_ips"] = ["10.7.1.1/32"]
    items[2]["preshared_key"] = PSK
    items[3] = {"public_key": format_key(key("s", 99)), "allowed_ips": ["10.7.0.3/32"]}
    text = doc(items)
    after = parse_snapshot(text, before).wireguard["wg0"].peers
    held = before.wireguard["wg0"].peers
    assert isinstance(after, PeerTable) and isinstance(held, PeerTable)
    assert after == parse_snapshot(text).wireguard["wg0"].peers
    same = [k for k, record in after.records.items() if held.records.get(k) is record]
    assert same == [key("s", i) for i in (0, 4, 5)]
    # Another interface's peers are not this one's, even with the same keys.
    other = json.loads(text)
    other["wireguard"] = {"wg1": other["wireguard"]["wg0"]}
    wg1 = parse_snapshot(json.dumps(other), before).wireguard["wg1"].peers
    assert isinstance(wg1, PeerTable) and wg1 == after
    assert not {id(r) for r in wg1.records.values()} & {id(r) for r in held.records.values()}


def test_a_packed_peer_shows_no_key() -> None:
    item = peer_item({"public_key": K1, "preshared_key": PSK, "allowed_ips": ["10.8.0.2/32"]})
    assert isinstance(item, bytes)
    for shown in (repr(item), str(item), f"{item}", repr([item])):
        assert shown.count("PeerItem(<redacted>)") == 1
        assert key("f", 1) not in shown.encode("latin-1") and "\\x" not in shown


def test_expiries_beyond_what_utc_holds_are_kept_at_its_ends() -> None:
    """Year 1 an hour east of UTC is before datetime.min in UTC: kept as that, still past."""
    first, last = format_key(key("e", 1)), format_key(key("e", 2))
    state = parse_snapshot(
        doc(
            [
                {"public_key": first, "expires_at": "0001-01-01T00:00:00+01:00"},
                {"public_key": last, "expires_at": "9999-12-31T23:59:59.999999-01:00"},
            ]
        )
    )
    expires = state.wireguard["wg0"].expires
    assert expires[key("e", 1)] == datetime.min.replace(tzinfo=UTC)
    assert expires[key("e", 2)] == datetime.max.replace(tzinfo=UTC)
    assert list(state.wireguard["wg0"].active(datetime(2026, 6, 1, tzinfo=UTC))) == [key("e", 2)]


def test_a_peer_may_route_many_thousands_of_networks() -> None:
    """Over 64 KiB of packed routes for one peer (a site behind it): taken, not an overflow."""
    routes = [f"fd00:{i >> 16:x}:{i & 0xFFFF:x}::/48" for i in range(5000)]
    wg0 = parse_snapshot(doc([{"public_key": K1, "allowed_ips": routes}, {"public_key": K2}]))
    assert len(wg0.wireguard["wg0"].peers[key("f", 1)].allowed_ips) == 5000
    assert len(wg0.wireguard["wg0"].peers[key("f", 2)].allowed_ips) == 0


BAD = [
    ("not json", "{", "not valid JSON"),
    ("no version", json.dumps({"full": True}), "version"),
    ("not full", json.dumps({"version": "1", "full": False}), "full"),
    (
        "key as interface name",
        json.dumps({"version": "1", "full": True, "wireguard": {K1: {"peers": []}}}),
        "not a valid interface name",
    ),
    *[
        (
            f"interface name {name!r}",
            json.dumps({"version": "1", "full": True, "wireguard": {name: {"peers": []}}}),
            "not a valid interface name",
        )
        # The rules of core.names, the configuration's too: "." and ".." are refused.
        for name in (".", "..", "", "wg/0", "wg 0", "wg-0123456789abc", "wg0:1", "wgé")
    ],
    ("short key", doc([{"public_key": "AAAA"}]), "peers[0].public_key"),
    ("hex key", doc([{"public_key": key("f", 1).hex()}]), "peers[0].public_key"),
    ("bad psk", doc([{"public_key": K1, "preshared_key": K1[:-2]}]), "preshared_key"),
    ("host bits", doc([{"public_key": K1, "allowed_ips": ["10.8.0.1/24"]}]), "host bits"),
    ("not an ip", doc([{"public_key": K1, "allowed_ips": ["10.8.0.300/32"]}]), "allowed_ips[0]"),
    (
        "dup ip",
        doc(
            [
                {"public_key": K1, "allowed_ips": ["10.8.0.2/32"]},
                {"public_key": K2, "allowed_ips": ["10.8.0.2/32"]},
            ]
        ),
        "peers[1].allowed_ips",
    ),
    ("dup key", doc([{"public_key": K1}, {"public_key": K1}]), "duplicate public key"),
    ("bad expiry", doc([{"public_key": K1, "expires_at": "tomorrow"}]), "expires_at"),
    ("naive expiry", doc([{"public_key": K1, "expires_at": "2027-01-01T00:00:00"}]), "expires_at"),
    ("unknown field", doc([{"public_key": K1, "endpoint": "192.0.2.9:51820"}]), "unknown field"),
    ("bad scheme", doc([], [{**GOOD_USER, "password_hash": "md5$abc"}]), "hash scheme"),
    ("dup user", doc([], [GOOD_USER, GOOD_USER]), "duplicate username"),
    *[
        (f"scrypt {why}", doc([], [{**GOOD_USER, "password_hash": h}]), why)
        for h, why in [
            ("scrypt$1048576$8$1$c2FsdA==$aGFzaA==", "more than 64 MiB"),
            ("scrypt$16384$8$5$c2FsdA==$aGFzaA==", "p is above 4"),
            ("scrypt$10000$8$1$c2FsdA==$aGFzaA==", "not a power of two"),
            ("scrypt$16384$0$1$c2FsdA==$aGFzaA==", "at least 1"),
            ("scrypt$16384$8$1$c2FsdA=$aGFzaA==", "not base64"),
        ]
    ],
    ("user expiry", doc([], [{**GOOD_USER, "expires_at": "2027-13-01T00:00:00Z"}]), "expires_at"),
    # The decoder packs each valid peer object as it meets it, wherever it is.
    ("peer as a user", doc([], [{"public_key": K1}]), "openvpn.users[0]: must be a user object"),
    ("peer as a route", doc([{"public_key": K1, "allowed_ips": [{"public_key": K2}]}]), "ips[0]"),
    (
        "peer as interface",
        json.dumps({"version": "1", "full": True, "wireguard": {"wg0": {"public_key": K1}}}),
        "wireguard.wg0: must be an object with a peers list",
    ),
    ("peer as document", json.dumps({"public_key": K1}), "document must be a feed document"),
    (
        "peer as wireguard",
        json.dumps({"version": "1", "full": True, "wireguard": {"public_key": K1}}),
        "wireguard: must be an object of interfaces",
    ),
    (
        "peer as openvpn",
        json.dumps({"version": "1", "full": True, "openvpn": {"public_key": K1}}),
        "openvpn: must be an object with a users list",
    ),
]


@pytest.mark.parametrize(("name", "text", "fragment"), BAD, ids=[b[0] for b in BAD])
def test_bad_documents_are_rejected_without_quoting_values(
    name: str, text: str, fragment: str
) -> None:
    with pytest.raises(FeedError) as info:
        parse_snapshot(text)
    message = str(info.value)
    assert fragment in message
    for secret in (K1, K2, PSK, key("f", 1).hex(), "10.8.0", "192.0.2.9", "u48151623", "md5$"):
        assert secret not in message


@pytest.mark.parametrize("text", ["10.0.0.\x00/32", "\udcff/32", "fd00::\x00/128"])
def test_an_allowed_ip_error_quotes_nothing_of_the_input(text: str) -> None:
    with pytest.raises(ValueError) as e:
        AllowedIP.parse(text)
    assert str(e.value) == "allowed IP is not an IP network"
