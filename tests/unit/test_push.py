"""Signed pushes against a real aiohttp collector on 127.0.0.1 that verifies them.

The collector here is the test collector: ``collector.verify`` with an
in-memory replay guard. Both sides share one fake clock, so backoff and the
timestamp window are exercised without waiting.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web

from nodeagent.central.collector.verify import Refused, ReplayGuard, verify_push
from nodeagent.core.backoff import Backoff
from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import Pusher, sign, signed_headers
from nodeagent.publish.status import StatusBoard
from tests.daemon import free_port

SECRET = b"node-secret-0123456789"
NODE = "nl-ams-01"
START = 1_800_000_000.0


class FakeClock:
    def __init__(self, t: float = START) -> None:
        self.t = t
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += max(seconds, 0.0)
        await asyncio.sleep(0)


@dataclass
class Collector:
    """A status collector: verifies each push, keeps the accepted documents."""

    clock: Callable[[], float]
    guard: ReplayGuard = field(default_factory=lambda: ReplayGuard({NODE: SECRET}))
    accepted: list[dict[str, object]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            self.guard.verify(request.headers, body, self.clock())
        except Refused as e:
            self.refused.append(e.code)
            return web.Response(status=e.status, text=e.code)
        self.accepted.append(json.loads(body))
        return web.Response(status=204)

    async def start(self, port: int = 0) -> int:
        app = web.Application()
        app.router.add_post("/api/v1/push", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", port)
        await site.start()
        return int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def board(clock: FakeClock, percent: int = 37) -> StatusBoard:
    b = StatusBoard(NODE, "0.1.0")
    b.update(LoadReport(percent, percent, 5, percent * 10**7, 0, 10**9, 60))
    return b


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def running() -> AsyncIterator[tuple[FakeClock, Collector, str]]:
    clock = FakeClock()
    collector = Collector(clock)
    port = await collector.start()
    yield clock, collector, f"http://127.0.0.1:{port}/api/v1/push"
    await collector.stop()


def pusher(url: str, clock: FakeClock, body: Callable[[], bytes], session: aiohttp.ClientSession,
           secret: bytes = SECRET, interval: float = 60.0) -> Pusher:  # fmt: skip
    return Pusher(url, NODE, secret, interval, body, session=session, clock=clock,
                  sleep=clock.sleep, rnd=lambda: 0.5)  # fmt: skip


async def test_signed_push_is_verified(
    running: tuple[FakeClock, Collector, str], session: aiohttp.ClientSession
) -> None:
    clock, collector, url = running
    b = board(clock)
    p = pusher(url, clock, lambda: b.body, session)
    assert await p.push_once()
    assert collector.accepted == [json.loads(b.body)]
    assert collector.guard.last[NODE] == int(START)
    assert (p.successes, p.failures) == (1, 0)


async def test_wrong_secret_is_refused(
    running: tuple[FakeClock, Collector, str], session: aiohttp.ClientSession
) -> None:
    clock, collector, url = running
    b = board(clock)
    p = pusher(url, clock, lambda: b.body, session, secret=b"another-secret")
    assert not await p.push_once()
    assert collector.refused == ["bad_signature"] and collector.accepted == []
    assert (p.successes, p.failures, p.consecutive_failures) == (0, 1, 1)


@pytest.mark.parametrize(("offset", "accepted"), [(-301, False), (-299, True), (301, False)])
async def test_timestamp_window(
    running: tuple[FakeClock, Collector, str],
    session: aiohttp.ClientSession,
    offset: int,
    accepted: bool,
) -> None:
    clock, collector, url = running
    body = board(clock).body
    ts = int(clock()) + offset
    async with session.post(url, data=body, headers=signed_headers(NODE, SECRET, ts, body)) as r:
        assert (r.status == 204) is accepted
    assert collector.refused == ([] if accepted else ["timestamp_out_of_window"])


async def test_replay_and_tampering_are_refused(
    running: tuple[FakeClock, Collector, str], session: aiohttp.ClientSession
) -> None:
    clock, collector, url = running
    body = board(clock).body
    headers = signed_headers(NODE, SECRET, int(clock()), body)
    async with session.post(url, data=body, headers=headers) as r:
        assert r.status == 204
    clock.t += 5
    async with session.post(url, data=body, headers=headers) as r:  # the same request again
        assert r.status == 409
    older = signed_headers(NODE, SECRET, int(clock()) - 10, body)  # validly signed, but older
    async with session.post(url, data=body, headers=older) as r:
        assert r.status == 409
    newer = signed_headers(NODE, SECRET, int(clock()), body)
    async with session.post(url, data=body.replace(b"37", b"12"), headers=newer) as r:
        assert r.status == 401  # the body was changed after signing
    async with session.post(url, data=body, headers={**newer, "X-Nodeagent-Node": "x"}) as r:
        assert r.status == 401  # an unknown node
    assert collector.refused == ["replay", "replay", "bad_signature", "bad_signature"]
    assert len(collector.accepted) == 1


async def test_collector_down_then_back(session: aiohttp.ClientSession) -> None:
    """Failures back off exponentially; on recovery only the newest figure is sent."""
    clock = FakeClock()
    collector = Collector(clock)
    port = free_port()
    url = f"http://127.0.0.1:{port}/api/v1/push"
    b = board(clock, percent=10)
    p = pusher(url, clock, lambda: b.body, session, interval=60.0)
    task = asyncio.create_task(p.run())
    try:
        while p.failures < 6:
            await asyncio.sleep(0.01)
        # Equal jitter with rnd=0.5: 3/4 of 1, 2, 4, 8, 16 s. (Sleeps under half a
        # second are the pusher waiting for the next whole second for its timestamp.)
        backoffs = [s for s in clock.sleeps if s >= 0.5]
        assert backoffs[:6] == [0.75, 1.5, 3.0, 6.0, 12.0, 24.0]
        assert max(backoffs) <= 300.0
        for percent in (20, 30, 40):  # figures that change while the collector is away
            b.update(LoadReport(percent, percent, 5, percent * 10**7, 0, 10**9, 60))
        assert await collector.start(port) == port
        while p.successes < 1:
            await asyncio.sleep(0.01)
        # Nothing of the outage is replayed: every accepted push carries the newest figure.
        assert {doc["load"]["percent"] for doc in collector.accepted} == {40}  # type: ignore[index]
        assert p.consecutive_failures == 0
        assert p.next_delay() == 60.0  # back to the normal interval
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await collector.stop()
    assert collector.refused == []


async def test_collector_error_status_backs_off(
    running: tuple[FakeClock, Collector, str], session: aiohttp.ClientSession
) -> None:
    clock, collector, url = running
    b = board(clock)
    p = pusher(url, clock, lambda: b.body, session, secret=b"wrong")
    assert not await p.push_once()
    assert not await p.push_once()
    assert p.next_delay() == pytest.approx(1.5)
    assert collector.accepted == []


async def test_timestamps_strictly_increase(
    running: tuple[FakeClock, Collector, str], session: aiohttp.ClientSession
) -> None:
    clock, collector, url = running
    b = board(clock)
    p = pusher(url, clock, lambda: b.body, session)
    clock.t = START + 0.2
    assert await p.push_once()
    clock.t = START + 0.7  # the same second: must wait for the next one, not be refused
    assert await p.push_once()
    assert collector.refused == [] and len(collector.accepted) == 2
    assert collector.guard.last[NODE] == int(START) + 1


def test_backoff_bounds() -> None:
    backoff = Backoff(base=1.0, cap=300.0)
    assert backoff.delay(1, 0.0) == 0.5 and backoff.delay(1, 1.0) == 1.0
    assert backoff.delay(9, 0.0) == 128.0 and backoff.delay(10, 0.0) == 150.0
    assert backoff.delay(50, 1.0) == 300.0 and backoff.delay(10**6, 0.5) == 225.0
    assert Pusher("http://x/", NODE, SECRET, 600.0, lambda: b"").backoff.cap == 600.0


def test_verify_is_pure_and_exact() -> None:
    body = b'{"node":"n"}'
    headers = {
        "X-Nodeagent-Node": "n",
        "X-Nodeagent-Timestamp": "1000",
        "X-Nodeagent-Signature": sign(b"k", 1000, body),
    }
    assert verify_push(
        headers, body, secret_for={"n": b"k"}.get, now=1000.0, last_accepted=lambda n: None
    ) == ("n", 1000)
    for bad in (
        {"X-Nodeagent-Signature": sign(b"k", 1001, body)},
        {"X-Nodeagent-Signature": sign(b"k", 1000, body).upper()},
        {"X-Nodeagent-Timestamp": "1000.0"},
        {"X-Nodeagent-Timestamp": "+1000"},
    ):
        with pytest.raises(Refused) as e:
            verify_push(
                {**headers, **bad},
                body,
                secret_for={"n": b"k"}.get,
                now=1000.0,
                last_accepted=lambda n: None,
            )
        assert e.value.code == "bad_signature"
    with pytest.raises(Refused) as e:
        verify_push(
            {k: v for k, v in headers.items() if k != "X-Nodeagent-Timestamp"},
            body,
            secret_for={"n": b"k"}.get,
            now=1000.0,
            last_accepted=lambda n: None,
        )
    assert e.value.status == 400
