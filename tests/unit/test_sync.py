"""sync_interface: the mass-removal guard and "send nothing when nothing changed"."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodeagent.model import DesiredInterface
from nodeagent.sync import RemovalRefused, sync_interface
from tests.fakes import FakeBackend
from tests.peerdata import make_peers

NOW = datetime(2026, 11, 21, tzinfo=UTC)


def test_first_sync_onto_empty_interface_is_not_guarded() -> None:
    fake = FakeBackend()
    out = sync_interface(fake, DesiredInterface(make_peers(10)), NOW, 0.1)
    assert out.added == 10 and fake.peers == make_peers(10)


def test_mass_removal_is_refused_and_changes_nothing() -> None:
    fake = FakeBackend()
    fake.peers = make_peers(10)
    with pytest.raises(RemovalRefused) as info:
        sync_interface(fake, DesiredInterface(make_peers(4)), NOW, 0.5)
    assert "remove 6 of 10" in str(info.value)
    assert fake.peers == make_peers(10) and not fake.applied


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
