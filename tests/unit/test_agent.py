"""The daemon's behaviour against the fake backend: feed changes, reload, drift, expiry."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodeagent.config.agent import Config, WireguardInterfaceConfig, load_config
from nodeagent.core.model import Peer
from nodeagent.core.reconcile import plan
from nodeagent.daemon.agent import Agent, sync_once
from tests.fakes import FakeBackend
from tests.peerdata import feed_document, key, make_peers, write_atomic

CONFIG = """\
node:
  name: test-01
wireguard:
  resync_interval: 200ms
  interfaces:
    - name: wgu0
      backend: userspace
feed:
  path: {feed}
log:
  level: debug
"""


def feed_doc(
    peers: dict[bytes, Peer], version: str = "v1", expires: dict[bytes, str] | None = None
) -> str:
    return feed_document(peers, "wgu0", version, expires)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Harness:
    def __init__(self, tmp: Path) -> None:
        self.feed = tmp / "feed.json"
        self.config_path = tmp / "config.yaml"
        self.config_path.write_text(CONFIG.format(feed=self.feed))
        self.fake = FakeBackend("wgu0")

    def factory(self, cfg: WireguardInterfaceConfig) -> FakeBackend:
        assert cfg.name == "wgu0"
        return self.fake

    def config(self) -> Config:
        return load_config(self.config_path)


@pytest.fixture
async def harness(tmp_path: Path) -> AsyncIterator[tuple[Harness, Agent]]:
    h = Harness(tmp_path)
    h.feed.write_text(feed_doc(make_peers(20)))
    agent = Agent(h.config(), backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    yield h, agent
    agent.request_stop()
    await asyncio.wait_for(task, 5)


async def test_initial_sync_then_feed_change(harness: tuple[Harness, Agent]) -> None:
    h, agent = harness
    await until(lambda: h.fake.peers == make_peers(20))
    write_atomic(h.feed, feed_doc(make_peers(25), "v2"))
    await until(lambda: h.fake.peers == make_peers(25))
    assert agent.state.feed_version == "v2"
    # Resyncs of an unchanged feed send nothing.
    applied = len(h.fake.applied)
    await asyncio.sleep(0.5)
    assert len(h.fake.applied) == applied


async def test_bad_feed_changes_nothing(harness: tuple[Harness, Agent]) -> None:
    h, agent = harness
    await until(lambda: h.fake.peers == make_peers(20))
    bad = json.loads(feed_doc(make_peers(5), "v3"))
    bad["wireguard"]["wgu0"]["peers"][1]["allowed_ips"] = ["10.0.0.1/24"]
    write_atomic(h.feed, json.dumps(bad))
    await until(lambda: agent.state.feed_errors == {"invalid": 1})
    await asyncio.sleep(0.3)
    assert h.fake.peers == make_peers(20) and agent.state.feed_version == "v1"


async def test_drift_is_repaired(harness: tuple[Harness, Agent]) -> None:
    h, _ = harness
    await until(lambda: h.fake.peers == make_peers(20))
    victim = next(iter(h.fake.peers))
    del h.fake.peers[victim]
    h.fake.peers[key("intruder", 1)] = Peer(key("intruder", 1))
    await until(lambda: h.fake.peers == make_peers(20))


async def test_apply_failure_is_retried(harness: tuple[Harness, Agent]) -> None:
    h, agent = harness
    await until(lambda: h.fake.peers == make_peers(20))
    h.fake.fail_next_apply = True
    write_atomic(h.feed, feed_doc(make_peers(22), "v2"))
    await until(lambda: agent.state.sync_errors == 1)
    await until(lambda: h.fake.peers == make_peers(22))


async def test_reload_with_bad_config_keeps_running(harness: tuple[Harness, Agent]) -> None:
    h, agent = harness
    await until(lambda: h.fake.peers == make_peers(20))
    h.config_path.write_text("node: {name: x}\nbogus: 1\n")
    write_atomic(h.feed, feed_doc(make_peers(21), "v2"))
    agent.request_reload()
    await until(lambda: h.fake.peers == make_peers(21))
    assert agent.config.node_name == "test-01"


async def test_expiry_is_enforced_without_a_feed_change(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    peers = make_peers(3)
    soon = (datetime.now(UTC) + timedelta(seconds=0.8)).isoformat()
    first = next(iter(peers))
    h.feed.write_text(feed_doc(peers, expires={first: soon}))
    config = h.config()
    # A slow resync proves the agent wakes for the expiry itself.
    object.__setattr__(config.wireguard, "resync_interval", 3600.0)
    agent = Agent(config, backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: len(h.fake.peers) == 3)
        await until(lambda: first not in h.fake.peers, timeout=3)
        assert len(h.fake.peers) == 2
    finally:
        agent.request_stop()
        await task


async def test_no_feed_leaves_interface_alone(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.fake.peers = make_peers(4)
    agent = Agent(h.config(), backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.5)
    agent.request_stop()
    await task
    assert h.fake.peers == make_peers(4) and not h.fake.applied


def test_sync_once_counts_and_second_run_is_empty(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed.write_text(feed_doc(make_peers(30)))
    (first,) = sync_once(h.config(), h.factory)
    assert (first.added, first.updated, first.removed) == (30, 0, 0)
    (second,) = sync_once(h.config(), h.factory)
    assert (second.added, second.updated, second.removed, second.unchanged) == (0, 0, 0, 30)
    assert plan(make_peers(30), h.fake.peers).empty


async def test_feed_changes_are_planned_against_the_known_state(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    h.feed.write_text(feed_doc(make_peers(20)))
    config = h.config()
    object.__setattr__(config.wireguard, "resync_interval", 3600.0)
    agent = Agent(config, backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: h.fake.peers == make_peers(20))
        reads = h.fake.reads
        write_atomic(h.feed, feed_doc(make_peers(30), "v2"))
        await until(lambda: h.fake.peers == make_peers(30))
        # Applied without reading 20 peers back first; only the plan's 10 were sent.
        assert h.fake.reads == reads
        assert len(h.fake.applied[-1].add) == 10
    finally:
        agent.request_stop()
        await task


async def test_a_recreated_interface_is_repopulated_before_the_next_drift_repair(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    h = Harness(tmp_path)
    h.feed.write_text(feed_doc(make_peers(20)))
    config = h.config()
    # Only the presence watch can notice within the test: the read-back is an hour away.
    object.__setattr__(config.wireguard, "resync_interval", 3600.0)
    agent = Agent(config, backend_factory=h.factory)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: h.fake.peers == make_peers(20))
        h.fake.recreate()  # a wireguard-go restart: the same name, empty
        await until(lambda: h.fake.peers == make_peers(20))
        # Gone, then back: the pass in between fails (no interface) and the return is noticed.
        h.fake.exists = False
        await until(lambda: agent.state.sync_errors >= 1 or "interface_changed" in caplog.text)
        h.fake.exists = True
        h.fake.recreate()
        await until(lambda: h.fake.peers == make_peers(20))
        assert "interface_changed interface=wgu0 present=True" in caplog.text
    finally:
        agent.request_stop()
        await task
