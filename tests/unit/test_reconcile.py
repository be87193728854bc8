"""reconcile.plan: table tests and random walks over state sequences."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from nodeagent.core.model import (
    DesiredInterface,
    Peer,
    PeerTable,
    PeerUpdate,
    Plan,
    RecordPeers,
)
from nodeagent.core.reconcile import apply_to, plan, share_equal
from nodeagent.core.routes import AllowedIP
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


# --- PeerTable: the dict of Peers it stands for, in a third of the memory ------------

tables = states.map(lambda d: (d, PeerTable(d.values())))


@settings(max_examples=300)
@given(tables, keys)
def test_a_table_reads_as_the_dict_of_peers_it_stands_for(
    pair: tuple[dict[bytes, Peer], PeerTable], probe: bytes
) -> None:
    peers, table = pair
    assert table == peers and peers == table
    assert table != {**peers, A: Peer(A)} or peers == {**peers, A: Peer(A)}
    assert len(table) == len(peers) and list(table) == list(peers)
    assert list(table.items()) == list(peers.items())
    assert list(table.values()) == list(peers.values())
    assert (probe in table) == (probe in peers)
    assert table.get(probe) == peers.get(probe)
    assert all(table[k] == p and table[k].allowed_ips == p.allowed_ips for k, p in peers.items())
    gone = table.without([probe])
    assert gone == {k: p for k, p in peers.items() if k != probe} and table == peers
    assert PeerTable.of_records(dict(table.records)) == table


def test_a_table_shows_no_key_or_address() -> None:
    table = PeerTable([Peer(A, frozenset({IP1}), PSK)])
    text = repr(table) + str(table) + repr(table.items()) + repr(table.values())
    assert A.hex() not in text and "10.0.0.1" not in text and text.count("PeerTable(<1 peers>)")


@settings(max_examples=300)
@given(states, states)
def test_tables_plan_and_apply_as_dicts_do(
    desired: dict[bytes, Peer], held: dict[bytes, Peer]
) -> None:
    want, have = PeerTable(desired.values()), PeerTable(held.values())
    p = plan(want, have)
    assert p == plan(desired, held) == plan(want, held) == plan(desired, have)
    after = apply_to(have, p)
    assert isinstance(after, PeerTable) and after == apply_to(held, p) == desired
    assert plan(want, after).empty


@settings(max_examples=300)
@given(states, states, st.integers(0, 8))
def test_a_tables_additions_are_its_own_records_until_each_peer_is_sent(
    desired: dict[bytes, Peer], held: dict[bytes, Peer], room: int
) -> None:
    want = PeerTable(desired.values())
    p = plan(want, held)
    assert isinstance(p.add, RecordPeers)
    assert all(r is want.records[k] for k, r in zip(p.add.keys, p.add.records, strict=True))
    as_tuple = tuple(desired[k] for k in sorted(set(desired) - set(held)))
    assert p.add == as_tuple and as_tuple == p.add and hash(p.add) == hash(as_tuple)
    assert list(p.add) == list(as_tuple) and len(p.add) == len(as_tuple)
    assert [p.add[i] for i in range(len(p.add))] == list(as_tuple)
    first = p.add[:room]  # what fits under a backend's limit
    assert isinstance(first, RecordPeers) and first == as_tuple[:room]
    # Applied to a table, the additions are the desired table's very records.
    after = apply_to(PeerTable(held.values()), p)
    assert isinstance(after, PeerTable)
    assert all(after.records[k] is want.records[k] for k in p.add.keys)
    assert repr(p.add) == f"RecordPeers(<{len(p.add)} peers>)"  # no key


@settings(max_examples=300)
@given(states, states)
def test_a_table_shares_its_records_with_what_an_interface_holds(
    desired: dict[bytes, Peer], held: dict[bytes, Peer]
) -> None:
    want = PeerTable(desired.values())
    for have in (held, PeerTable(held.values())):
        shared = share_equal(have, want)
        assert isinstance(shared, PeerTable) and shared == held
        if held == desired:
            assert shared is want
        for k, record in shared.records.items():
            theirs = want.records.get(k)
            assert (record is theirs) == (theirs == record)


def test_an_unexpired_table_is_active_as_it_is() -> None:
    now = datetime.now(UTC)
    table = PeerTable(make_peers(3).values())
    k0, k1, _ = table
    later, earlier = now.replace(year=now.year + 1), now.replace(year=now.year - 1)
    assert DesiredInterface(table, {k0: later}).active(now) is table
    active = DesiredInterface(table, {k0: later, k1: earlier}).active(now)
    assert isinstance(active, PeerTable) and list(active) == [k for k in table if k != k1]
    assert active.records[k0] is table.records[k0] and len(table) == 3
