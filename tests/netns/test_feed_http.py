"""The HTTP feed end to end: reference feed server -> HttpFeed -> sync_interface -> wireguard-go.

Walks the issue's scenario list in order on one real wireguard-go interface and
reads the interface back after every step: full sync, a run of deltas, a
version gap, 410, 304 long-poll timeouts, server errors, a truncated body,
invalid JSON, a duplicate allowed IP, an oversized body, the server down for a
while, and expiry while the server is down. Whatever the feed does wrong, the
peers on the interface stay as they were (fail static).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from nodeagent.central.feedserver import Fault, FeedServer
from nodeagent.central.feedstore import FeedStore
from nodeagent.config.agent import FeedConfig
from nodeagent.core.model import DesiredState, Peer, format_key
from nodeagent.core.reconcile import plan
from nodeagent.core.sync import sync_interface
from nodeagent.feed.http import HttpFeed
from nodeagent.feed.snapshot import parse_snapshot
from nodeagent.lab.netns import Namespace
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.peerdata import key

KEYS = [format_key(key("nf", i)) for i in range(1000)]


def peer(i: int, *, ip: str | None = None, expires_at: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {
        "public_key": KEYS[i],
        "allowed_ips": [ip or f"10.60.{i >> 8}.{i & 255}/32"],
    }
    if i % 3 == 0:
        item["preshared_key"] = format_key(key("nfpsk", i))
    if expires_at is not None:
        item["expires_at"] = expires_at
    return item


def utcnow() -> datetime:
    return datetime.now(UTC)


class Node:
    """The agent's feed path in miniature: follow the feed, sync each new state, expire on time."""

    def __init__(self, iface: str, backend: UapiBackend, feed: HttpFeed) -> None:
        self.iface = iface
        self.backend = backend
        self.feed = feed
        self.held: DesiredState | None = None
        self.refused = 0

    async def take(self, timeout: float = 15.0) -> DesiredState:
        """Wait for the next state from the feed and apply it, as the agent would."""
        self.held = await asyncio.wait_for(self.feed.next(self.held), timeout)
        await self.sync()
        return self.held

    async def sync(self) -> None:
        assert self.held is not None
        outcome = await asyncio.to_thread(
            sync_interface, self.backend, self.held.wireguard[self.iface], utcnow(), 0.5
        )
        if outcome.held_removals:
            self.refused += 1

    def actual(self) -> dict[bytes, Peer]:
        return dict(self.backend.read().peers)

    def assert_in_step(self, server: FeedServer) -> None:
        """The interface holds exactly what the server's accounts say is active now."""
        want = parse_snapshot(server.store.full_body(False)).wireguard[self.iface].active(utcnow())
        actual = self.actual()
        assert set(actual) == set(want)
        assert plan(want, actual).empty

    async def assert_fail_static(self, before: dict[bytes, Peer], seconds: float = 0.6) -> None:
        """While ``next`` is pending, nothing reaches the interface."""
        await asyncio.sleep(seconds)
        assert self.actual() == before


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    srv = FeedServer(FeedStore(history=3), token=b"netns-token")
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
async def node(
    wggo: tuple[str, str, Namespace], server: FeedServer, tmp_path: Any
) -> AsyncIterator[Node]:
    name, socket_path, _ = wggo
    token = tmp_path / "feed.token"
    token.write_bytes(b"netns-token\n")
    token.chmod(0o600)
    config = FeedConfig(
        url=server.url,
        path=None,
        token_file=str(token),
        ca_file=None,
        long_poll=0.3,
        max_removal_ratio=0.5,
        max_bytes=1 << 20,
    )
    feed = HttpFeed(config, min_interval=0.0, timeout_margin=1.0, backoff_min=0.1, backoff_max=0.4)
    async with feed:
        yield Node(name, UapiBackend(name, socket_path), feed)


async def test_feed_scenarios_on_wireguard_go(node: Node, server: FeedServer) -> None:
    store, iface, stats = server.store, node.iface, node.feed.stats

    # 1. Full sync onto the empty interface.
    store.apply({iface: [peer(i) for i in range(50)]})
    await node.take()
    node.assert_in_step(server)
    assert len(node.actual()) == 50 and stats.answers["full"] == 1

    # 2. A run of deltas: adds, a re-addressed peer, removals.
    for step in range(5):
        store.apply(
            {iface: [peer(100 + step), peer(step, ip=f"10.61.0.{step}/32")]},
            {iface: [KEYS[40 + step]]},
        )
        await node.take()
        node.assert_in_step(server)
    assert stats.answers["delta"] == 5 and stats.answers["full"] == 1

    # 3. A version gap: a delta whose since is not ours is never applied; a full one follows.
    store.apply({iface: [peer(110)]})
    server.inject(Fault("gap"))
    await node.take()
    node.assert_in_step(server)
    assert stats.answers["gap"] == 1 and stats.answers["full"] == 2

    # 4. 410: the held version fell out of the server's history (3 versions).
    held_version = node.held.version if node.held else ""
    for i in range(5):
        store.apply({iface: [peer(120 + i)]})
    assert store.delta_document(held_version) is None
    await node.take()
    node.assert_in_step(server)
    assert stats.answers["gone"] == 1 and stats.answers["full"] == 3

    # 5. 304: long polls time out (long_poll 0.3 s) and nothing changes on the interface.
    before, polls = node.actual(), stats.answers["not_modified"]
    pending = asyncio.create_task(node.take())
    await node.assert_fail_static(before, 1.0)
    assert stats.answers["not_modified"] >= polls + 2 and not pending.done()
    store.apply({iface: [peer(130)]})
    await pending
    node.assert_in_step(server)

    # 6-9. Faults are served in place of whatever was asked, long polls included.
    # Server errors, a truncated body, invalid JSON, an oversized body: each one is
    # counted, the interface keeps its peers, and the next good answer is applied.
    extra = 140
    for fault, kind in [
        (Fault("status", status=500), "http_status"),
        (Fault("status", status=503), "http_status"),
        (Fault("truncate"), "truncated"),
        (Fault("invalid_json"), "invalid"),
        (Fault("oversize", size=8 << 20), "too_large"),
        (Fault("oversize", size=8 << 20, declare_length=True), "too_large"),
        (Fault("gzip_bomb", size=64 << 20), "too_large"),
    ]:
        errors = stats.errors[kind]
        before = node.actual()
        server.inject(fault, count=3)
        pending = asyncio.create_task(node.take())
        await node.assert_fail_static(before, 0.4)
        assert stats.errors[kind] >= errors + 1, kind
        extra += 1
        store.apply({iface: [peer(extra)]})
        await pending
        node.assert_in_step(server)

    # 10. A feed with a duplicate allowed IP is refused whole; the last good state stays.
    before = node.actual()
    invalid = stats.errors["invalid"]
    store.apply({iface: [peer(200), peer(201, ip="10.60.0.7/32")]})  # peer 7's address
    pending = asyncio.create_task(node.take())
    await node.assert_fail_static(before, 0.8)
    assert stats.errors["invalid"] == invalid + 1
    assert key("nf", 200) not in node.actual()  # not even the valid part of the delta
    store.apply(remove={iface: [KEYS[201]]})
    await pending
    node.assert_in_step(server)
    assert key("nf", 200) in node.actual()

    # 11. Mass removal: the guard holds back a feed's removals of most peers.
    before = node.actual()
    keep = sorted(store.peers[iface])[:5]
    store.apply(remove={iface: [k for k in store.peers[iface] if k not in keep]})
    await node.take()
    assert node.refused == 1 and node.actual() == before

    # 12. The server down for a while: connection errors, the peers stay, recovery by itself.
    store.replace({"wireguard": {iface: {"peers": [peer(i) for i in range(60)]}}})
    await node.take()
    node.assert_in_step(server)
    before, connect_errors = node.actual(), stats.errors["connect"]
    await server.stop()
    pending = asyncio.create_task(node.take())
    await node.assert_fail_static(before, 2.0)
    assert stats.errors["connect"] >= connect_errors + 3
    age = stats.age(time.time())
    assert age is not None and age >= 1.9
    store.apply({iface: [peer(300)]})
    await server.start()
    await pending
    node.assert_in_step(server)
    age = stats.age(time.time())
    assert age is not None and age < 1.0


async def test_expiry_while_the_server_is_down(node: Node, server: FeedServer) -> None:
    soon = (utcnow() + timedelta(seconds=3)).isoformat()
    later = (utcnow() + timedelta(days=1)).isoformat()
    store, iface = server.store, node.iface
    store.apply(
        {
            iface: [
                *(peer(i) for i in range(10)),
                peer(10, expires_at=soon),
                peer(11, expires_at=soon),
                peer(12, expires_at=later),
            ]
        }
    )
    await node.take()
    assert len(node.actual()) == 13
    await server.stop()
    pending = asyncio.create_task(node.take())
    # The agent's reconciler wakes at the next expiry; the feed being down changes nothing.
    assert node.held is not None
    nxt = node.held.wireguard[iface].next_expiry(utcnow())
    assert nxt is not None
    await asyncio.sleep((nxt - utcnow()).total_seconds() + 0.05)
    await node.sync()
    actual = node.actual()
    assert key("nf", 10) not in actual and key("nf", 11) not in actual
    assert key("nf", 12) in actual and len(actual) == 11
    assert node.feed.stats.errors["connect"] >= 1 and not pending.done()
    pending.cancel()
