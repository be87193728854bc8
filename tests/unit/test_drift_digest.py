"""Drift repair by configuration digest: the decision (pure), one pass, and the daemon.

A drift repair reads an interface back only when its digest differs from the
one recorded by a read-back that found nothing to send; any change the agent
makes, any failure, a reload or a recreated interface leaves no digest.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest

from nodeagent.core.model import DesiredInterface, Peer
from nodeagent.core.sync import Basis, digest_after, plan_basis, sync_interface
from nodeagent.daemon.agent import Agent
from tests.fakes import FakeBackend
from tests.peerdata import key, make_peers, v4, write_atomic
from tests.unit.test_agent import Harness, feed_doc, until

NOW = datetime(2026, 6, 1, tzinfo=UTC)


# --- the decision ------------------------------------------------------------------------


class Digest:
    """A digest() that counts its calls."""

    def __init__(self, value: int | None) -> None:
        self.value, self.calls = value, 0

    def __call__(self) -> int | None:
        self.calls += 1
        return self.value


@pytest.mark.parametrize(
    ("known", "recorded", "due", "current", "basis", "asked"),
    [
        (False, None, False, 5, Basis.READ_BACK, 0),
        (False, 5, True, 5, Basis.READ_BACK, 0),  # nothing known: nothing to vouch for
        (True, 5, False, 6, Basis.KNOWN, 0),  # between repairs: trusted, nothing asked
        (True, None, False, 6, Basis.KNOWN, 0),
        (True, None, True, 5, Basis.READ_BACK, 0),  # a repair with no digest recorded
        (True, 5, True, 5, Basis.DIGEST, 1),  # unchanged: no read
        (True, 5, True, 6, Basis.READ_BACK, 1),  # changed: read back
        (True, 5, True, None, Basis.READ_BACK, 1),  # unknown: read back
        (True, 0, True, 0, Basis.DIGEST, 1),  # 0 is a digest like any other
    ],
)
def test_plan_basis(
    known: bool, recorded: int | None, due: bool, current: int | None, basis: Basis, asked: int
) -> None:
    digest = Digest(current)
    assert plan_basis(known=known, recorded=recorded, repair_due=due, digest=digest) is basis
    assert digest.calls == asked


@pytest.mark.parametrize(
    ("basis", "applied", "recorded", "read", "after"),
    [
        (Basis.READ_BACK, False, None, 7, 7),  # a read-back that found no drift vouches
        (Basis.READ_BACK, False, 3, 7, 7),
        (Basis.READ_BACK, False, 3, None, None),  # a read without a digest does not
        (Basis.READ_BACK, True, None, 7, None),  # a repair sent: the next repair reads back
        (Basis.DIGEST, False, 3, None, 3),
        (Basis.DIGEST, True, 3, None, None),
        (Basis.KNOWN, False, 3, None, 3),  # nothing sent since the digest was taken
        (Basis.KNOWN, False, None, None, None),
        (Basis.KNOWN, True, 3, None, None),  # a feed change or an expiry applied
    ],
)
def test_digest_after(
    basis: Basis, applied: bool, recorded: int | None, read: int | None, after: int | None
) -> None:
    assert digest_after(basis, applied, recorded, read) == after


# --- one pass ------------------------------------------------------------------------------


def settled(n: int = 10) -> tuple[FakeBackend, DesiredInterface, dict[bytes, Peer], int]:
    """A fake holding ``n`` peers and a pass that read it back, found no drift, left a digest."""
    fake = FakeBackend()
    want = DesiredInterface(make_peers(n))
    first = sync_interface(fake, want, NOW)
    assert first.added == n and first.digest is None  # it applied: no digest
    out = sync_interface(fake, want, NOW, known=first.peers, digest=first.digest, repair_due=True)
    assert out.basis is Basis.READ_BACK and out.digest is not None and out.added == 0
    return fake, want, dict(out.peers), out.digest


def test_a_repair_with_an_unchanged_digest_reads_nothing() -> None:
    fake, want, known, digest = settled()
    reads = fake.reads
    out = sync_interface(fake, want, NOW, known=known, digest=digest, repair_due=True)
    assert out.basis is Basis.DIGEST and not out.read_back
    assert fake.reads == reads and fake.digests == 1
    assert (out.added, out.updated, out.removed, out.unchanged) == (0, 0, 0, 10)
    assert out.digest == digest  # still vouched for
    # Between repairs the digest is not even asked for.
    again = sync_interface(fake, want, NOW, known=out.peers, digest=out.digest)
    assert again.basis is Basis.KNOWN and fake.digests == 1 and again.digest == digest


def test_a_scrub_re_add_is_no_drift() -> None:
    """Re-adding a peer (the scrubber's) changes no configuration: the digest still matches."""
    fake, want, known, digest = settled()
    k = next(iter(fake.peers))
    fake.peers[k] = fake.peers.pop(k)  # removed and added again: listed last now
    assert list(fake.peers)[-1] == k
    reads = fake.reads
    out = sync_interface(fake, want, NOW, known=known, digest=digest, repair_due=True)
    assert out.basis is Basis.DIGEST and fake.reads == reads


def _remove(fake: FakeBackend, want: DesiredInterface) -> None:
    del fake.peers[next(iter(want.peers))]


def _route(fake: FakeBackend, want: DesiredInterface) -> None:
    k = list(want.peers)[1]
    fake.peers[k] = Peer(k, (v4(999, 11),), fake.peers[k].preshared_key)


def _psk(fake: FakeBackend, want: DesiredInterface) -> None:
    k = list(want.peers)[2]
    fake.peers[k] = Peer(k, fake.peers[k].allowed_ips, key("hand-set", 1))


def _intruder(fake: FakeBackend, want: DesiredInterface) -> None:
    fake.peers[key("intruder", 1)] = Peer(key("intruder", 1), (v4(5, 12),))


@pytest.mark.parametrize("drift", [_remove, _route, _psk, _intruder])
def test_drift_behind_the_agents_back_is_repaired_at_the_next_repair(drift: object) -> None:
    fake, want, known, digest = settled()
    assert callable(drift)
    drift(fake, want)
    out = sync_interface(fake, want, NOW, known=known, digest=digest, repair_due=True)
    assert out.basis is Basis.READ_BACK and out.read_back
    assert out.added + out.updated + out.removed == 1
    assert fake.peers == dict(want.peers)
    assert out.digest is None  # it repaired: the next repair reads back, and records
    nxt = sync_interface(fake, want, NOW, known=out.peers, digest=out.digest, repair_due=True)
    assert nxt.basis is Basis.READ_BACK and nxt.digest == digest


def test_drift_between_repairs_waits_for_the_repair() -> None:
    fake, want, known, digest = settled()
    _remove(fake, want)
    out = sync_interface(fake, want, NOW, known=known, digest=digest)  # a feed wake-up
    assert out.basis is Basis.KNOWN and fake.peers != dict(want.peers)
    out = sync_interface(fake, want, NOW, known=out.peers, digest=out.digest, repair_due=True)
    assert out.basis is Basis.READ_BACK and fake.peers == dict(want.peers)


def test_a_feed_change_leaves_no_digest() -> None:
    fake, _, known, digest = settled()
    newer = DesiredInterface(make_peers(12))
    out = sync_interface(fake, newer, NOW, known=known, digest=digest)
    assert out.added == 2 and out.digest is None
    # The next repair reads back, whatever the digest would say.
    reads = fake.reads
    out = sync_interface(fake, newer, NOW, known=out.peers, digest=out.digest, repair_due=True)
    assert out.basis is Basis.READ_BACK and fake.reads == reads + 1 and fake.digests == 0


def test_a_failed_digest_is_the_passs_failure() -> None:
    fake, want, known, digest = settled()
    fake.exists = False
    with pytest.raises(Exception, match="no such interface"):
        sync_interface(fake, want, NOW, known=known, digest=digest, repair_due=True)


# --- the daemon ------------------------------------------------------------------------------


async def start(tmp_path: Path, peers: int = 20) -> tuple[Harness, Agent, asyncio.Task[None]]:
    h = Harness(tmp_path)  # resync_interval 200ms
    h.feed.write_text(feed_doc(make_peers(peers)))
    agent = Agent(h.config(), backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    await until(lambda: h.fake.peers == make_peers(peers))
    # A repair read back and recorded the digest; the next one asks for it.
    await until(lambda: h.fake.digests >= 2)
    return h, agent, task


async def stop(agent: Agent, task: asyncio.Task[None]) -> None:
    agent.request_stop()
    await asyncio.wait_for(task, 5)


async def test_the_daemon_idles_on_digests(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodeagent.daemon.peers")
    h, agent, task = await start(tmp_path)
    try:
        reads, digests, applied = h.fake.reads, h.fake.digests, len(h.fake.applied)
        await until(lambda: h.fake.digests >= digests + 3)
        assert h.fake.reads == reads and len(h.fake.applied) == applied
        assert "peer_sync unchanged interface=wgu0" in caplog.text and "basis=digest" in caplog.text
    finally:
        await stop(agent, task)


@pytest.mark.parametrize("drift", [_remove, _route, _psk, _intruder])
async def test_the_daemon_repairs_drift_despite_a_recorded_digest(
    tmp_path: Path, drift: object
) -> None:
    h, agent, task = await start(tmp_path)
    try:
        assert callable(drift)
        reads = h.fake.reads
        drift(h.fake, DesiredInterface(make_peers(20)))
        await until(lambda: h.fake.peers == make_peers(20))
        assert h.fake.reads > reads
        # Then back to digests: a read-back that found nothing records the new one.
        reads = h.fake.reads
        digests = h.fake.digests
        await until(lambda: h.fake.digests >= digests + 3)
        assert h.fake.reads <= reads + 1
    finally:
        await stop(agent, task)


async def test_the_daemons_own_changes_leave_no_digest(tmp_path: Path) -> None:
    h, agent, task = await start(tmp_path)
    try:
        reads = h.fake.reads
        write_atomic(h.feed, feed_doc(make_peers(22), "v2"))
        await until(lambda: h.fake.peers == make_peers(22))
        # The repair after the apply reads back, whatever the digest says.
        await until(lambda: h.fake.reads > reads)
        # A recreated interface (its presence changed) is read back, not trusted.
        reads = h.fake.reads
        h.fake.recreate()
        await until(lambda: h.fake.peers == make_peers(22))
        assert h.fake.reads > reads
    finally:
        await stop(agent, task)


async def test_a_failure_leaves_no_digest(tmp_path: Path) -> None:
    h, agent, task = await start(tmp_path)
    try:
        h.fake.fail_next_apply = True
        write_atomic(h.feed, feed_doc(make_peers(21), "v2"))
        await until(lambda: agent.state.sync_errors == 1)
        reads = h.fake.reads
        await until(lambda: h.fake.peers == make_peers(21))
        assert h.fake.reads > reads  # the retry read back
    finally:
        await stop(agent, task)
