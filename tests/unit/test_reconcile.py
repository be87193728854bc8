"""reconcile.plan: table tests and random walks over state sequences."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.core.model import AllowedIP, DesiredInterface, Peer, PeerUpdate, Plan
from nodeagent.core.reconcile import apply_to, plan, share_equal
from tests.peerdata import key, make_peers

A, B, C = key("t", 1), key("t", 2), key("t", 3)
IP1, IP2 = AllowedIP.parse("10.0.0.1/32"), AllowedIP.parse("fd00::1/128")
PSK = key("psk", 1)


def test_empty_to_empty_is_empty() -> None:
    assert plan({}, {}).empty


def test_add_update_remove() -> None:
    actual = {A: Peer(A, frozenset({IP1})), B: Peer(B)}
    desired = {A: Peer(A, frozenset({IP1, IP2})), C: Peer(C, preshared_key=PSK)}
    p = plan(desired, actual)
    assert p.add == (Peer(C, preshared_key=PSK),)
    assert p.update == (PeerUpdate(A, allowed_ips=frozenset({IP1, IP2})),)
    assert p.remove == (B,)


def test_update_sends_only_fields_that_differ() -> None:
    actual = {A: Peer(A, frozenset({IP1}), PSK)}
    only_psk = plan({A: Peer(A, frozenset({IP1}), None)}, actual)
    assert only_psk.update == (PeerUpdate(A, None, True, None),)
    only_ips = plan({A: Peer(A, frozenset({IP2}), PSK)}, actual)
    assert only_ips.update == (PeerUpdate(A, frozenset({IP2}), False, None),)


def test_same_state_plans_nothing() -> None:
    state = {A: Peer(A, frozenset({IP1}), PSK), B: Peer(B)}
    assert plan(state, dict(state)) == Plan()


def test_repr_leaks_nothing() -> None:
    p = plan({A: Peer(A, frozenset({IP1}), PSK)}, {B: Peer(B)})
    text = repr(p) + repr(p.add) + repr(p.remove[0:0]) + repr(Peer(A, frozenset({IP1}), PSK))
    assert "10.0.0.1" not in text and A.hex() not in text and "psk" not in repr(p)


keys = st.sampled_from([key("w", i) for i in range(8)])
ips = st.frozensets(st.sampled_from([AllowedIP.parse(f"10.1.0.{i}/32") for i in range(6)]))
psks = st.one_of(st.none(), st.sampled_from([key("wpsk", i) for i in range(3)]))
states = st.dictionaries(keys, st.tuples(ips, psks), max_size=8).map(
    lambda d: {k: Peer(k, v[0], v[1]) for k, v in d.items()}
)


@settings(max_examples=300)
@given(st.lists(states, min_size=1, max_size=6))
def test_random_walk_converges_and_is_idempotent(walk: list[dict[bytes, Peer]]) -> None:
    actual: dict[bytes, Peer] = {}
    for desired in walk:
        p = plan(desired, actual)
        actual = apply_to(actual, p)
        assert actual == desired
        assert plan(desired, actual).empty
        # Removals only name peers that existed; adds only peers that did not.
        assert not set(p.remove) & set(desired)


def test_share_equal_holds_the_desired_mapping_itself_when_the_peers_are_equal() -> None:
    desired = make_peers(50)
    copy = {bytes(k): Peer(bytes(k), p.allowed_ips, p.preshared_key) for k, p in desired.items()}
    assert share_equal(copy, desired) is desired
    assert share_equal(desired, desired) is desired
    # One peer differs: a mapping of its own, holding the desired objects where equal.
    k0 = next(iter(desired))
    copy[k0] = Peer(k0, (), None)
    shared = share_equal(copy, desired)
    assert shared is not desired and shared[k0] is copy[k0]
    assert all(shared[k] is desired[k] for k in desired if k != k0)
    # Fewer peers held than desired (additions waiting): never the desired mapping.
    del copy[k0]
    assert share_equal(copy, desired) is not desired


def test_active_is_the_peers_themselves_without_expiry() -> None:
    peers = make_peers(3)
    assert DesiredInterface(peers).active(datetime.now(UTC)) is peers
