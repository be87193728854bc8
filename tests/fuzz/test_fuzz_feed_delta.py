"""Fuzz target: feed deltas (``parse_delta``, ``apply_delta``, ``apply_document``).

Every input ends in ``FeedError`` (``DeltaMismatch`` included) or in a valid
state. An applied delta is checked against a plain model of what it means
(remove, then upsert; refused when an allowed IP would end up on two peers),
and the state it was applied to is left untouched.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.core.model import DesiredState, format_key
from nodeagent.feed.delta import (
    Applied,
    Delta,
    DeltaMismatch,
    apply_delta,
    apply_document,
    parse_delta,
)
from nodeagent.feed.snapshot import FeedError, parse_snapshot
from tests.fuzz.feeddocs import (
    DEEP,
    KEYS,
    NETS,
    _with_extra,
    check_state,
    encoded,
    feed_ifname,
    feed_key,
    feed_username,
    interfaces,
    json_values,
    junk,
    mostly,
    peer,
    snapshot_doc,
    user,
)
from tests.fuzz.harness import ended_well, target

# The state deltas are applied to: pool keys and networks, so that deltas touch them.
CURRENT = parse_snapshot(
    json.dumps(
        {
            "version": "v1",
            "full": True,
            "wireguard": {
                "wg0": {
                    "peers": [
                        {"public_key": format_key(KEYS[i]), "allowed_ips": [NETS[i], NETS[i + 4]]}
                        for i in range(3)
                    ]
                    + [
                        {
                            "public_key": format_key(KEYS[3]),
                            "expires_at": "2027-01-01T00:00:00Z",
                        }
                    ]
                }
            },
            "openvpn": {
                "users": [{"username": "u1", "password_hash": "scrypt$16384$8$1$c2FsdA==$aGFzaA=="}]
            },
        }
    )
)


def _frozen(state: DesiredState) -> Any:
    return (
        state.version,
        {n: (dict(i.peers), dict(i.expires)) for n, i in state.wireguard.items()},
        dict(state.users),
    )


BEFORE = _frozen(CURRENT)

delta_doc = _with_extra(
    st.fixed_dictionaries(
        {
            "version": mostly(st.sampled_from(["v2", "v3"]), junk, one_in=20),
            "full": mostly(st.just(False), junk, one_in=20),
            "since": mostly(st.just("v1"), st.one_of(st.just("v0"), junk), one_in=8),
            "wireguard": interfaces(
                _with_extra(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "upsert": st.lists(peer, max_size=5),
                            "remove": st.lists(feed_key, max_size=4),
                        },
                    ),
                    20,
                ),
                # Mostly the interface CURRENT has, so that upserts meet its peers.
                names=mostly(st.just("wg0"), feed_ifname, one_in=3),
            ),
        },
        optional={
            "openvpn": _with_extra(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "upsert": st.lists(user, max_size=3),
                        "remove": st.lists(feed_username, max_size=3),
                    },
                )
            ),
        },
    ),
    one_in=20,
)


def model(state: DesiredState, delta: Delta) -> DesiredState | None:
    """What applying ``delta`` means, written plainly; None where it must be refused."""
    wireguard = dict(state.wireguard)
    for name, change in delta.wireguard.items():
        base = state.wireguard.get(name)
        peers = dict(base.peers) if base else {}
        expires = dict(base.expires) if base else {}
        for k in change.remove:
            peers.pop(k, None)
            expires.pop(k, None)
        for p, expiry in change.upsert:
            peers[p.public_key] = p
            expires.pop(p.public_key, None)
            if expiry is not None:
                expires[p.public_key] = expiry
        ips = [ip for p in peers.values() for ip in p.allowed_ips]
        if len(ips) != len(set(ips)):
            return None
        wireguard[name] = type(state.wireguard["wg0"])(peers, expires)
    users = {n: u for n, u in state.users.items() if n not in delta.user_remove}
    users.update(delta.user_upsert)
    return DesiredState(delta.version, wireguard, users)


def run(data: bytes) -> None:
    delta = ended_well(lambda: parse_delta(data), FeedError, source=data)
    applied = ended_well(lambda: apply_document(data, CURRENT), FeedError, source=data)
    assert _frozen(CURRENT) == BEFORE, "the current state was changed"
    if isinstance(applied, Applied):
        check_state(applied.state)
    if not isinstance(delta, Delta):
        return
    result = ended_well(lambda: apply_delta(CURRENT, delta), FeedError, source=data)
    assert _frozen(CURRENT) == BEFORE, "the current state was changed"
    expected = model(CURRENT, delta) if delta.since == CURRENT.version else None
    if isinstance(result, FeedError):
        assert expected is None, f"refused a delta that applies: {result}"
        assert isinstance(result, DeltaMismatch) == (delta.since != CURRENT.version)
        assert isinstance(applied, FeedError)
    else:
        assert expected is not None, "applied a delta that puts an allowed IP on two peers"
        check_state(result)
        assert _frozen(result) == _frozen(expected)
        assert isinstance(applied, Applied) and _frozen(applied.state) == _frozen(result)


@target(200)
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    run(data)


@target(200)
@given(encoded(json_values))
def test_any_json(data: bytes) -> None:
    run(data)


@target(500)
@given(encoded(delta_doc))
def test_delta_shaped(data: bytes) -> None:
    run(data)


@target(200)
@given(encoded(snapshot_doc))
def test_snapshot_answering_since(data: bytes) -> None:
    # A full snapshot is a valid answer to since= as well.
    run(data)


def test_deep_nesting() -> None:
    for data in DEEP:
        assert isinstance(
            ended_well(lambda d=data: parse_delta(d), FeedError, source=data), FeedError
        )
        assert isinstance(
            ended_well(lambda d=data: apply_document(d, CURRENT), FeedError, source=data),
            FeedError,
        )
