"""sync_interface: the mass-removal guard, the peer limit, "send nothing when nothing changed"."""

from __future__ import annotations

from datetime import UTC, datetime

from nodeagent.core.model import DesiredInterface, Peer
from nodeagent.core.sync import sync_interface
from tests.fakes import FakeBackend
from tests.peerdata import key, make_peers

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def test_first_sync_onto_empty_interface_is_not_guarded() -> None:
    fake = FakeBackend()
    out = sync_interface(fake, DesiredInterface(make_peers(10)), NOW, 0.1)
    assert out.added == 10 and fake.peers == make_peers(10)


def test_mass_removal_is_held_back_and_changes_nothing() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    out = sync_interface(fake, DesiredInterface(make_peers(4)), NOW, 0.5)
    assert (out.removed, out.held_removals, out.unchanged, out.peer_count) == (0, 6, 10, 10)
    assert fake.peers == make_peers(10) and not fake.applied
    assert "held_removals=6" in out.event()


def test_additions_and_updates_go_out_while_removals_are_held() -> None:
    """New sign-ups never wait behind a refused mass removal."""
    fake = FakeBackend()
    fake.peers = make_peers(10)
    kept = dict(list(make_peers(10).items())[:3])
    changed = next(iter(kept))
    kept[changed] = Peer(changed, kept[changed].allowed_ips, key("psk", 999))
    new = {k: p for k, p in make_peers(13).items() if k not in make_peers(10)}
    out = sync_interface(fake, DesiredInterface({**kept, **new}), NOW, 0.5)
    assert (out.added, out.updated, out.removed, out.held_removals) == (3, 1, 0, 7)
    assert len(fake.peers) == 13 and fake.peers[changed].preshared_key == key("psk", 999)
    assert out.peer_count == len(out.peers) == 13


def test_expired_peers_go_even_while_feed_removals_are_held() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    past = datetime(2026, 1, 1, tzinfo=UTC)
    wanted = dict(list(make_peers(10).items())[:2])
    expired = next(iter(wanted))
    out = sync_interface(fake, DesiredInterface(wanted, {expired: past}), NOW, 0.5)
    assert (out.removed, out.held_removals) == (1, 8)
    assert expired not in fake.peers and len(fake.peers) == 9


def test_peer_limit_applies_what_fits() -> None:
    fake = FakeBackend()
    fake.max_peers = 12
    fake.peers = make_peers(10)
    out = sync_interface(fake, DesiredInterface(make_peers(20)), NOW, 0.5)
    assert (out.added, out.held_additions, out.peer_count) == (2, 8, 12)
    assert len(fake.peers) == 12
    # The same ones wait on the next pass: nothing is sent again.
    again = sync_interface(fake, DesiredInterface(make_peers(20)), NOW, 0.5, known=out.peers)
    assert (again.added, again.held_additions) == (0, 8) and len(fake.applied) == 1


def test_removals_make_room_under_the_peer_limit() -> None:
    fake = FakeBackend()
    fake.max_peers = 10
    fake.peers = make_peers(10)
    desired = {k: p for k, p in make_peers(14).items() if k not in list(make_peers(4))}
    out = sync_interface(fake, DesiredInterface(desired), NOW, 0.5)
    assert (out.added, out.removed, out.held_additions) == (4, 4, 0) and len(fake.peers) == 10


def test_removal_within_ratio_is_applied() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    out = sync_interface(fake, DesiredInterface(make_peers(5)), NOW, 0.5)
    assert out.removed == 5 and out.unchanged == 5


def test_expiry_removals_are_not_limited_by_the_guard() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    past = datetime(2026, 1, 1, tzinfo=UTC)
    desired = DesiredInterface(make_peers(10), {k: past for k in list(make_peers(10))[:8]})
    out = sync_interface(fake, desired, NOW, 0.5)
    assert out.removed == 8 and len(fake.peers) == 2


def test_unchanged_state_sends_nothing() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    out = sync_interface(fake, DesiredInterface(make_peers(10)), NOW, 0.5)
    assert (out.added, out.updated, out.removed, out.unchanged) == (0, 0, 0, 10)
    assert not fake.applied


def test_held_peers_are_the_desired_objects_where_equal() -> None:
    """After a read-back the interface's equal peers are not held as a second copy."""
    fake = FakeBackend()
    fake.peers = make_peers(10)  # equal to the desired ones, other objects
    odd = key("peer", 3)
    fake.peers[odd] = Peer(odd, frozenset(), None)  # differs: updated
    desired = DesiredInterface(make_peers(10))
    out = sync_interface(fake, desired, NOW, 0.5)
    assert (out.updated, out.unchanged) == (1, 9)
    assert out.peers == desired.peers
    for k, p in out.peers.items():
        assert p is desired.peers[k]
        assert next(q for q in out.peers if q == k) is desired.peers[k].public_key
    # A pass from that state keeps the same mapping: nothing left to share.
    again = sync_interface(fake, desired, NOW, 0.5, known=out.peers)
    assert again.peers is out.peers


def test_a_new_snapshot_replaces_the_held_copies_of_the_old_one() -> None:
    fake = FakeBackend()
    first = sync_interface(fake, DesiredInterface(make_peers(5)), NOW, 0.5)
    newer = DesiredInterface(make_peers(5))  # the same peers, freshly parsed
    out = sync_interface(fake, newer, NOW, 0.5, known=first.peers)
    assert out.added == out.updated == out.removed == 0
    assert all(p is newer.peers[k] for k, p in out.peers.items())
