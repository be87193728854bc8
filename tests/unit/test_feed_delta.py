"""Feed deltas: validation, application, and the snapshot rules on the result."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from nodeagent.central.feedstore import FeedStore
from nodeagent.core.model import DesiredState, format_key
from nodeagent.core.routes import AllowedIP, allowed_ips
from nodeagent.feed.delta import DeltaMismatch, apply_delta, apply_document, parse_delta
from nodeagent.feed.snapshot import FeedError, parse_snapshot
from tests.peerdata import key

K = [format_key(key("d", i)) for i in range(6)]
PSK = format_key(key("dpsk", 0))
USER = {"username": "u48151623", "password_hash": "scrypt$16384$8$1$c2FsdA==$aGFzaA=="}
USER2 = {"username": "u2", "password_hash": "scrypt$16384$8$1$c2FsdA==$aGFzaA=="}


def base(routes: tuple[str, str] = ("10.8.0.2/32", "10.8.0.3/32")) -> DesiredState:
    """The state the deltas apply to: K[0] and K[1] routing ``routes``, one user."""
    return parse_snapshot(
        json.dumps(
            {
                "version": "v1",
                "full": True,
                "wireguard": {
                    "wg0": {
                        "peers": [
                            {"public_key": K[0], "allowed_ips": [routes[0]]},
                            {
                                "public_key": K[1],
                                "allowed_ips": [routes[1]],
                                "expires_at": "2027-01-01T00:00:00Z",
                            },
                        ]
                    }
                },
                "openvpn": {"users": [USER]},
            }
        )
    )


def delta(wg: dict[str, Any] | None = None, **extra: Any) -> str:
    d: dict[str, Any] = {"version": "v2", "full": False, "since": "v1"}
    if wg is not None:
        d["wireguard"] = wg
    d.update(extra)
    return json.dumps(d)


def test_upsert_and_remove_peers() -> None:
    state = base()
    new = apply_delta(
        state,
        parse_delta(
            delta(
                {
                    "wg0": {
                        "upsert": [
                            {
                                "public_key": K[2],
                                "allowed_ips": ["10.8.0.4/32"],
                                "preshared_key": PSK,
                            },
                            {"public_key": K[1], "allowed_ips": ["10.8.0.5/32"]},
                        ],
                        "remove": [K[0]],
                    }
                }
            )
        ),
    )
    wg0 = new.wireguard["wg0"]
    assert new.version == "v2"
    assert set(wg0.peers) == {key("d", 1), key("d", 2)}
    assert wg0.peers[key("d", 1)].allowed_ips == allowed_ips({AllowedIP.parse("10.8.0.5/32")})
    assert wg0.peers[key("d", 2)].preshared_key == key("dpsk", 0)
    # The upsert without expires_at replaces the peer whole: its old expiry goes too.
    assert wg0.expires == {}
    # The old state is untouched: the caller may still need it.
    assert set(state.wireguard["wg0"].peers) == {key("d", 0), key("d", 1)}
    assert state.version == "v1"


def test_upsert_sets_expiry_and_new_interface() -> None:
    new = apply_delta(
        base(),
        parse_delta(
            delta(
                {
                    "wg1": {
                        "upsert": [{"public_key": K[3], "expires_at": "2026-12-01T00:00:00+00:00"}]
                    }
                }
            )
        ),
    )
    assert new.wireguard["wg1"].expires[key("d", 3)] == datetime(2026, 12, 1, tzinfo=UTC)
    assert set(new.wireguard["wg0"].peers) == {key("d", 0), key("d", 1)}


def test_users() -> None:
    new = apply_delta(
        base(), parse_delta(delta(openvpn={"upsert": [USER2], "remove": ["u48151623"]}))
    )
    assert list(new.users) == ["u2"]


def test_removing_an_absent_peer_is_a_no_op() -> None:
    new = apply_delta(base(), parse_delta(delta({"wg0": {"remove": [K[5]]}})))
    assert set(new.wireguard["wg0"].peers) == {key("d", 0), key("d", 1)}


def test_an_address_may_move_within_one_delta() -> None:
    # The address of a removed (or replaced) peer is free for another one in the same delta.
    d = delta(
        {
            "wg0": {
                "upsert": [
                    {"public_key": K[2], "allowed_ips": ["10.8.0.2/32"]},
                    {"public_key": K[1], "allowed_ips": []},
                    {"public_key": K[3], "allowed_ips": ["10.8.0.3/32"]},
                ],
                "remove": [K[0]],
            }
        }
    )
    new = apply_delta(base(), parse_delta(d))
    assert new.wireguard["wg0"].peers[key("d", 2)].allowed_ips == allowed_ips(
        {AllowedIP.parse("10.8.0.2/32")}
    )


def test_since_must_be_the_current_version() -> None:
    d = parse_delta(json.dumps({"version": "v9", "full": False, "since": "v8"}))
    with pytest.raises(DeltaMismatch):
        apply_delta(base(), d)
    with pytest.raises(DeltaMismatch):
        apply_document(json.dumps({"version": "v2", "full": False, "since": "v1"}), None)


def test_parse_delta_refuses_a_snapshot() -> None:
    with pytest.raises(FeedError, match="full: a delta must have full: false"):
        parse_delta(json.dumps({"version": "v2", "full": True, "since": "v1"}))


def test_apply_document_takes_snapshots_too() -> None:
    snap = json.dumps({"version": "v7", "full": True, "wireguard": {"wg0": {"peers": []}}})
    new, full = apply_document(snap.encode(), base())
    assert full and new.version == "v7" and new.wireguard["wg0"].peers == {}


BAD_IP_UPSERT = {"public_key": K[2], "allowed_ips": ["10.8.0.2/32"]}

REJECTED: list[tuple[str, str, str]] = [
    ("not json", '{"version": "v2", "full": false,', "not valid JSON"),
    ("a list", "[]", "document must be a feed document"),
    ("full not bool", json.dumps({"version": "v2", "full": "no", "since": "v1"}), "full:"),
    ("no since", json.dumps({"version": "v2", "full": False}), "since:"),
    ("unknown top", delta(extra=1), "document: unknown field"),
    ("iface not obj", delta({"wg0": []}), "wireguard.wg0: must be an object of upsert and remove"),
    ("iface a peer", delta({"wg0": {"public_key": K[0]}}), "wg0: must be an object of upsert"),
    ("unknown change", delta({"wg0": {"add": []}}), "wireguard.wg0: unknown field"),
    ("upsert not list", delta({"wg0": {"upsert": {}}}), "wireguard.wg0.upsert: must be a list"),
    (
        "bad key",
        delta({"wg0": {"upsert": [{"public_key": K[2][:-2] + "=="}]}}),
        "wireguard.wg0.upsert[0].public_key",
    ),
    (
        "host bits",
        delta({"wg0": {"upsert": [{"public_key": K[2], "allowed_ips": ["10.8.0.1/24"]}]}}),
        "wireguard.wg0.upsert[0].allowed_ips[0]: allowed IP has host bits set",
    ),
    (
        "bad expiry",
        delta({"wg0": {"upsert": [{"public_key": K[2], "expires_at": "tomorrow"}]}}),
        "wireguard.wg0.upsert[0].expires_at",
    ),
    (
        "dup key",
        delta({"wg0": {"upsert": [{"public_key": K[2]}, {"public_key": K[2]}]}}),
        "wireguard.wg0.upsert[1].public_key: duplicate public key",
    ),
    (
        "dup ip in upsert",
        delta(
            {
                "wg0": {
                    "upsert": [
                        {"public_key": K[2], "allowed_ips": ["10.9.0.1/32"]},
                        {"public_key": K[3], "allowed_ips": ["10.9.0.1/32"]},
                    ]
                }
            }
        ),
        "wireguard.wg0.upsert[1].allowed_ips: an allowed IP of upsert[0] again",
    ),
    (
        "dup ip with a current peer",
        delta({"wg0": {"upsert": [{"public_key": K[4]}, BAD_IP_UPSERT]}}),
        "wireguard.wg0.upsert[1].allowed_ips: an allowed IP already routed to another peer",
    ),
    (
        "remove bad key",
        delta({"wg0": {"remove": ["nope"]}}),
        "wireguard.wg0.remove[0]: not 32 bytes",
    ),
    (
        "remove and upsert",
        delta({"wg0": {"upsert": [{"public_key": K[2]}], "remove": [K[2]]}}),
        "wireguard.wg0.remove[0]: also in upsert",
    ),
    (
        "remove twice",
        delta({"wg0": {"remove": [K[2], K[2]]}}),
        "wireguard.wg0.remove[1]: duplicate public key",
    ),
    (
        "user hash",
        delta(openvpn={"upsert": [{"username": "u9", "password_hash": "md5$x"}]}),
        "openvpn.upsert[0].password_hash: unknown hash scheme",
    ),
    (
        "dup user",
        delta(openvpn={"upsert": [USER2, USER2]}),
        "openvpn.upsert[1].username: duplicate username",
    ),
    (
        "remove bad username",
        delta(openvpn={"remove": ["a b"]}),
        "openvpn.remove[0]: not a valid username",
    ),
    (
        "user both",
        delta(openvpn={"upsert": [USER2], "remove": ["u2"]}),
        "openvpn.remove[0]: also in upsert",
    ),
]


@pytest.mark.parametrize(("name", "doc", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_rejected_deltas_name_positions_not_values(name: str, doc: str, message: str) -> None:
    state = base()
    with pytest.raises(FeedError) as info:
        apply_document(doc, state)
    text = str(info.value)
    assert message in text
    for secret in [*K, PSK, "10.8.0", "10.9.0", "u48151623", "u2", "md5", "tomorrow"]:
        assert secret not in text
    # All or nothing: the state in force is unchanged.
    assert state == base()


def _random_change(rng: random.Random, store: FeedStore, next_id: list[int]) -> None:
    table = store.peers.get("wg0", {})
    upsert, remove = [], []
    for _ in range(rng.randint(1, 4)):
        roll = rng.random()
        if table and roll < 0.3:
            remove.append(rng.choice(sorted(table)))
        elif table and roll < 0.5:
            k = rng.choice(sorted(table))
            # Re-address an existing peer onto a fresh network.
            upsert.append(
                {
                    "public_key": k,
                    "allowed_ips": [f"10.{20 + (next_id[0] >> 8)}.{next_id[0] & 255}.0/24"],
                }
            )
            next_id[0] += 1
        else:
            i = next_id[0]
            next_id[0] += 1
            item: dict[str, Any] = {
                "public_key": format_key(key("rnd", i)),
                "allowed_ips": [f"10.30.{i >> 8 & 255}.{i & 255}/32"],
            }
            if rng.random() < 0.3:
                item["expires_at"] = "2030-01-01T00:00:00Z"
            upsert.append(item)
    remove = [k for k in set(remove) if k not in {u["public_key"] for u in upsert}]
    users = [{**USER2, "username": f"r{next_id[0]}"}] if rng.random() < 0.3 else []
    store.apply({"wg0": upsert}, {"wg0": remove}, users, [])


@pytest.mark.parametrize("seed", range(20))
def test_deltas_of_the_reference_server_reach_its_snapshot(seed: int) -> None:
    """Walk random change sequences: old snapshot + delta == new snapshot, every time."""
    rng = random.Random(seed)
    store = FeedStore(history=8)
    next_id = [0]
    held = parse_snapshot(store.full_body(False))
    for _ in range(30):
        for _ in range(rng.randint(1, 3)):
            _random_change(rng, store, next_id)
        doc = store.delta_document(held.version)
        assert doc is not None
        held, full = apply_document(json.dumps(doc), held)
        assert not full
        assert held == parse_snapshot(store.full_body(False))


def test_a_route_that_only_straddles_two_held_routes_is_no_collision() -> None:
    # Packed, 10.8.0.4/32 then 0.0.0.7/32 are 04 20 0a 08 00 04 | 04 20 00 00 00 07:
    # from the sixth byte on that reads 04 04 20 00 00 00, which is 32.0.0.0/4 packed.
    held = base(routes=("10.8.0.4/32", "0.0.0.7/32"))
    straddle = delta({"wg0": {"upsert": [{"public_key": K[2], "allowed_ips": ["32.0.0.0/4"]}]}})
    new = apply_delta(held, parse_delta(straddle))
    assert len(new.wireguard["wg0"].peers) == 3
    taken = delta({"wg0": {"upsert": [{"public_key": K[2], "allowed_ips": ["0.0.0.7/32"]}]}})
    with pytest.raises(FeedError, match=r"upsert\[0\].allowed_ips: an allowed IP already routed"):
        apply_delta(held, parse_delta(taken))


def test_a_large_delta_finds_a_collision_too() -> None:
    items = [{"public_key": format_key(key("big", i)), "allowed_ips": [f"10.77.0.{i}/32"]}
             for i in range(40)]  # fmt: skip
    items[30]["allowed_ips"] = ["10.8.0.2/32"]  # K[0]'s route in base()
    with pytest.raises(FeedError, match=r"upsert\[30\].allowed_ips: an allowed IP already"):
        apply_delta(base(), parse_delta(delta({"wg0": {"upsert": items}})))
