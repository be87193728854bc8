"""The daemon against hostile or broken feeds: nothing they send stops it or moves the kernel.

A scripted central service on loopback answers each request from a list, so a
test can put a bad document at an exact point of the conversation.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import generate_latest

from nodeagent.config.agent import WireguardInterfaceConfig, load_config
from nodeagent.daemon.agent import Agent
from nodeagent.feed.http import HttpFeed
from tests.fakes import FakeBackend
from tests.peerdata import feed_document, make_peers, write_atomic

DEEP = b"[" * 200_000
Answer = Callable[[web.Request], web.StreamResponse]


def doc(n: int, version: str) -> str:
    return feed_document(make_peers(n), "wgu0", version)


def duplicate_ip_delta(since: str, version: str) -> bytes:
    """A well-formed delta whose new peer takes an allowed IP another peer holds."""
    taken = json.loads(doc(2, since))["wireguard"]["wgu0"]["peers"][0]["allowed_ips"][0]
    new = json.loads(doc(3, version))["wireguard"]["wgu0"]["peers"][2]
    new["allowed_ips"] = [taken]
    body = {
        "version": version,
        "full": False,
        "since": since,
        "wireguard": {"wgu0": {"upsert": [new]}},
    }
    return json.dumps(body).encode()


class Central:
    """Answers the n-th request with ``script[n]`` (the last one repeats)."""

    def __init__(self) -> None:
        self.script: list[Answer] = []
        self.requests: list[dict[str, str]] = []
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(dict(request.query))
        answer = self.script[min(len(self.requests), len(self.script)) - 1]
        if request.query.get("wait") and answer is NOT_MODIFIED:
            await asyncio.sleep(0.05)
        return answer(request)


def body(data: bytes | str) -> Answer:
    raw = data.encode() if isinstance(data, str) else data
    return lambda _: web.Response(body=raw, content_type="application/json")


def NOT_MODIFIED(_: web.Request) -> web.StreamResponse:
    return web.Response(status=304)


def status(code: int) -> Answer:
    return lambda _: web.Response(status=code)


@pytest.fixture
async def central() -> AsyncIterator[Central]:
    c = Central()
    app = web.Application()
    app.router.add_get("/feed", c.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    c.port = runner.addresses[0][1]
    yield c
    await runner.cleanup()


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


class Node:
    """An Agent on the fake backend, fed by a file or by ``central``."""

    def __init__(self, tmp: Path, feed: str) -> None:
        self.config_path = tmp / "config.yaml"
        self.fake = FakeBackend("wgu0")
        self.write(feed)

    def write(self, feed: str) -> None:
        self.config_path.write_text(
            "node: {name: test-01}\n"
            "wireguard:\n  resync_interval: 60s\n"
            "  interfaces: [{name: wgu0, backend: userspace}]\n"
            f"feed: {{{feed}}}\n"
        )

    def factory(self, cfg: WireguardInterfaceConfig) -> FakeBackend:
        return self.fake


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Node], Agent]]:
    started: list[tuple[Agent, asyncio.Task[None]]] = []

    def start(node: Node) -> Agent:
        agent = Agent(load_config(node.config_path), backend_factory=node.factory)
        started.append((agent, asyncio.create_task(agent.run())))
        return agent

    yield start
    for agent, task in started:
        assert not task.done(), "the agent stopped by itself"
        agent.request_stop()
        await asyncio.wait_for(task, 10)
        assert not agent.failed


def feed_errors_total(agent: Agent) -> float:
    text = generate_latest(agent.registry).decode()
    match = re.search(r"^nodeagent_feed_errors_total (\S+)$", text, re.M)
    assert match, text
    return float(match.group(1))


async def test_deeply_nested_file_feed_is_rejected_and_the_agent_runs_on(
    tmp_path: Path, running: Callable[[Node], Agent]
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(doc(5, "v1"))
    node = Node(tmp_path, f"path: {feed}")
    agent = running(node)
    await until(lambda: node.fake.peers == make_peers(5))
    write_atomic(feed, DEEP.decode())
    await until(lambda: agent.state.feed_errors["invalid"] == 1)
    assert agent.sources.ready() == "feed_rejected"
    write_atomic(feed, doc(7, "v2"))
    await until(lambda: node.fake.peers == make_peers(7))
    assert agent.sources.ready() is None


async def test_deeply_nested_http_answers_are_rejected_and_the_agent_runs_on(
    tmp_path: Path, central: Central, running: Callable[[Node], Agent]
) -> None:
    central.script = [body(doc(5, "v1")), body(DEEP), body(DEEP), body(doc(6, "v2"))]
    node = Node(tmp_path, f"url: http://127.0.0.1:{central.port}/feed, long_poll: 1s")
    agent = running(node)
    await until(lambda: node.fake.peers == make_peers(6), timeout=20)
    assert agent.state.feed_errors["invalid"] == 2
    assert feed_errors_total(agent) == 2


async def test_not_ready_while_polling_a_rejected_version(
    tmp_path: Path, central: Central, running: Callable[[Node], Agent]
) -> None:
    central.script = [body(doc(2, "v1")), body(duplicate_ip_delta("v1", "v2")), NOT_MODIFIED]
    node = Node(tmp_path, f"url: http://127.0.0.1:{central.port}/feed, long_poll: 1s")
    agent = running(node)
    await until(lambda: len(central.requests) >= 5)
    # It long-polls the rejected version, whose 304s prove nothing current.
    assert central.requests[-1].get("since") == "v2"
    assert agent.sources.ready() == "feed_rejected"
    assert "feed_rejected" in json.loads(agent.sources.status())["problems"]
    assert node.fake.peers == make_peers(2)
    # 304s to the version held still prove it current.
    central.script = [NOT_MODIFIED]
    central.requests.clear()
    write_atomic(node.config_path, node.config_path.read_text().replace("1s", "2s"))
    agent.request_reload()
    await until(lambda: any(r.get("since") == "v1" for r in central.requests))
    await until(lambda: agent.sources.ready() is None)


async def test_feed_error_counter_survives_a_reload_that_restarts_the_follower(
    tmp_path: Path, central: Central, running: Callable[[Node], Agent]
) -> None:
    central.script = [status(500)]
    node = Node(tmp_path, f"url: http://127.0.0.1:{central.port}/feed, long_poll: 1s")
    agent = running(node)
    await until(lambda: feed_errors_total(agent) >= 1, timeout=15)
    before = feed_errors_total(agent)
    central.script = [body(doc(3, "v1")), NOT_MODIFIED]
    central.requests.clear()
    node.write(f"url: http://127.0.0.1:{central.port}/feed, long_poll: 2s")
    agent.request_reload()
    await until(lambda: node.fake.peers == make_peers(3), timeout=15)
    assert feed_errors_total(agent) >= before


async def test_a_large_rejected_body_is_never_decoded_on_the_event_loop(
    central: Central, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    good = doc(3, "v1")
    bad = json.loads(doc(40_000, "v2"))
    bad["wireguard"]["wgu0"]["peers"][-1]["public_key"] = "not a key"
    central.script = [body(good), body(json.dumps(bad)), NOT_MODIFIED]
    loop_thread = threading.get_ident()
    on_loop: list[int] = []
    real = json.loads

    def watched(data: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() == loop_thread and len(data) > 100_000:
            on_loop.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(json, "loads", watched)
    node = Node(tmp_path, f"url: http://127.0.0.1:{central.port}/feed, long_poll: 1s")
    async with HttpFeed(load_config(node.config_path).feed, min_interval=0.05) as feed:
        first = await feed.next(None)
        pending = asyncio.create_task(feed.next(first))
        await until(lambda: feed.stats.errors["invalid"] == 1)
        await until(lambda: any(r.get("since") == "v2" for r in central.requests))
        pending.cancel()
    assert on_loop == []


async def test_additions_go_out_while_a_mass_removal_is_held(
    tmp_path: Path, running: Callable[[Node], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(doc(10, "v1"))
    node = Node(tmp_path, f"path: {feed}")
    agent = running(node)
    await until(lambda: node.fake.peers == make_peers(10))
    # The feed drops 8 of 10 and signs up one new peer (make_peers(11) minus the first 8).
    wanted = {k: p for i, (k, p) in enumerate(make_peers(11).items()) if i >= 8}
    write_atomic(feed, feed_document(wanted, "wgu0", "v2"))
    await until(lambda: len(node.fake.peers) == 11)
    assert set(wanted) <= set(node.fake.peers)
    await until(lambda: "removals_held" in json.loads(agent.sources.status()).get("problems", []))
    assert any(
        "peer_sync removals_held interface=wgu0 held=8 of=11" in r.getMessage()
        for r in caplog.records
    )


async def test_a_backend_peer_limit_is_reported_with_its_reason(
    tmp_path: Path, running: Callable[[Node], Agent], caplog: pytest.LogCaptureFixture
) -> None:
    feed = tmp_path / "feed.json"
    feed.write_text(doc(20, "v1"))
    node = Node(tmp_path, f"path: {feed}")
    node.fake.max_peers = 12
    agent = running(node)
    await until(lambda: len(node.fake.peers) == 12)
    await until(lambda: "peer_limit" in json.loads(agent.sources.status()).get("problems", []))
    assert any(
        "peer_sync peer_limit interface=wgu0 held_additions=8 "
        "reason=wireguard-go takes at most 12 peers" in r.getMessage()
        for r in caplog.records
    )
    assert (
        'nodeagent_reconcile_held_additions{interface="wgu0"} 8.0'
        in generate_latest(agent.registry).decode()
    )
