"""HttpFeed against the real reference feed server on 127.0.0.1.

No mocked client: every answer crosses a real socket. Sleeps of the backoff
are recorded and shortened, so that the tests see the delays without waiting.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from nodeagent.central.feedserver import Fault, FeedServer
from nodeagent.central.feedstore import FeedStore
from nodeagent.config.agent import FeedConfig
from nodeagent.core.model import DesiredState, format_key
from nodeagent.feed.http import HttpFeed
from nodeagent.feed.snapshot import parse_snapshot
from tests.peerdata import key

TOKEN = b"s3cret-token"
KEYS = [format_key(key("h", i)) for i in range(400)]


def peer(i: int, *, ip: str | None = None) -> dict[str, Any]:
    return {"public_key": KEYS[i], "allowed_ips": [ip or f"10.44.{i >> 8}.{i & 255}/32"]}


def secrets_in(text: str) -> list[str]:
    """Any key or tunnel address of this module that shows up in ``text``."""
    return [s for s in [*KEYS, "10.44.", "u48151623"] if s in text]


class Recorder:
    """An injectable sleep: records the delay, yields briefly instead of waiting."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(0.01)


@pytest.fixture
async def server() -> AsyncIterator[FeedServer]:
    srv = FeedServer(FeedStore(history=4), token=TOKEN)
    # 100 peers make the snapshot big enough to be sent gzipped.
    srv.store.apply({"wg0": [peer(i) for i in range(100)]})
    await srv.start()
    yield srv
    await srv.stop()


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "feed.token"
    path.write_bytes(TOKEN + b"\n")
    path.chmod(0o600)
    return path


def make_feed(server: FeedServer, token_file: Path | None, sleep: Recorder, **kw: Any) -> HttpFeed:
    config = FeedConfig(
        url=server.url,
        path=None,
        token_file=None if token_file is None else str(token_file),
        ca_file=None,
        long_poll=kw.pop("long_poll", 0.2),
        max_removal_ratio=0.5,
        max_bytes=kw.pop("max_bytes", 1 << 20),
    )
    return HttpFeed(
        config, sleep=sleep, rand=lambda: 0.5, min_interval=0.0, timeout_margin=2.0, **kw
    )


@pytest.fixture
async def feed(server: FeedServer, token_file: Path) -> AsyncIterator[tuple[HttpFeed, Recorder]]:
    sleep = Recorder()
    async with make_feed(server, token_file, sleep) as f:
        yield f, sleep


@pytest.fixture(autouse=True)
def _no_values_in_logs(caplog: pytest.LogCaptureFixture) -> Any:
    # setup_logging (run by other tests in this process) stops "nodeagent" propagating
    # to the root logger, where caplog listens; without this the check would see nothing.
    tree = logging.getLogger("nodeagent")
    saved = tree.propagate, tree.level
    tree.propagate = True
    caplog.set_level(logging.DEBUG)
    tree.setLevel(logging.DEBUG)
    yield
    tree.propagate, tree.level = saved[0], saved[1]
    # After the yield caplog.records is the teardown phase's (empty): ask for the call's.
    records = caplog.get_records("call")
    assert any(r.name == "nodeagent.feed.http" for r in records)
    for record in records:
        assert not secrets_in(record.getMessage()), record.getMessage()


def expected(server: FeedServer) -> DesiredState:
    return parse_snapshot(server.store.full_body(False))


async def next_state(f: HttpFeed, current: DesiredState | None) -> DesiredState:
    return await asyncio.wait_for(f.next(current), 10)


async def test_full_then_deltas(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, sleep = feed
    state = await next_state(f, None)
    assert state == expected(server) and len(state.wireguard["wg0"].peers) == 100
    assert f.stats.answers["full"] == 1
    assert f.stats.last_success is not None
    for i in range(100, 105):
        server.store.apply({"wg0": [peer(i)]}, {"wg0": [KEYS[i - 100]]})
        state = await next_state(f, state)
        assert state == expected(server)
    assert f.stats.answers["delta"] == 5 and f.stats.answers["full"] == 1
    assert not f.stats.errors and not sleep.delays


async def test_long_poll_304_then_change(
    server: FeedServer, feed: tuple[HttpFeed, Recorder]
) -> None:
    f, _ = feed
    state = await next_state(f, None)
    pending = asyncio.create_task(f.next(state))
    await asyncio.sleep(0.7)  # long_poll is 0.2 s: several 304s in a row
    assert not pending.done()
    assert f.stats.answers["not_modified"] >= 2
    server.store.apply({"wg0": [peer(200)]})
    new = await asyncio.wait_for(pending, 5)
    assert KEYS[200] in {format_key(k) for k in new.wireguard["wg0"].peers}
    assert new == expected(server)


async def test_a_change_ends_a_long_poll_at_once(server: FeedServer) -> None:
    # With a 30 s wait, the answer can only come within 5 s if the change woke the poll.
    sleep = Recorder()
    server.token = None
    async with make_feed(server, None, sleep, long_poll=30.0) as f:
        state = await next_state(f, None)
        pending = asyncio.create_task(f.next(state))
        await asyncio.sleep(0.3)
        server.store.apply({"wg0": [peer(201)]})
        new = await asyncio.wait_for(pending, 5)
        assert new.version == server.store.version


async def test_410_refetches_full(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, _ = feed
    state = await next_state(f, None)
    for i in range(6):  # history is 4: the held version falls out of it
        server.store.apply({"wg0": [peer(300 + i)]})
    new = await next_state(f, state)
    assert new == expected(server)
    assert f.stats.answers["gone"] == 1 and f.stats.answers["full"] == 2


async def test_restarted_server_answers_410(
    server: FeedServer, feed: tuple[HttpFeed, Recorder]
) -> None:
    f, _ = feed
    state = await next_state(f, None)
    await server.stop()
    old = server.store
    server.store = FeedStore(history=4)
    server.store.replace(old.full_document())
    server.store.apply({"wg0": [peer(250)]})
    await server.start()
    new = await next_state(f, state)
    assert new == expected(server) and f.stats.answers["gone"] == 1


async def test_version_gap_refetches_full(
    server: FeedServer, feed: tuple[HttpFeed, Recorder]
) -> None:
    f, _ = feed
    state = await next_state(f, None)
    server.store.apply({"wg0": [peer(210)]})
    server.inject(Fault("gap"))
    new = await next_state(f, state)
    assert new == expected(server)
    assert f.stats.answers["gap"] == 1 and f.stats.answers["full"] == 2
    assert not f.stats.errors


async def test_server_errors_back_off_with_jitter(
    server: FeedServer, feed: tuple[HttpFeed, Recorder]
) -> None:
    f, sleep = feed
    server.inject(Fault("status", status=500), count=3)
    server.inject(Fault("status", status=503))
    state = await next_state(f, None)
    assert state == expected(server)
    assert f.stats.errors["http_status"] == 4
    # rand() is 0.5: each delay is 3/4 of a step that doubles from 1 s.
    assert sleep.delays == [0.75, 1.5, 3.0, 6.0]
    assert f.stats.consecutive_errors == 0
    # Success resets the backoff.
    server.inject(Fault("status", status=502))
    server.store.apply({"wg0": [peer(211)]})
    await next_state(f, state)
    assert sleep.delays[-1] == 0.75


async def test_backoff_is_capped(server: FeedServer, token_file: Path) -> None:
    sleep = Recorder()
    async with make_feed(server, token_file, sleep, backoff_max=4.0) as f:
        server.inject(Fault("status", status=500), count=6)
        await next_state(f, None)
    assert sleep.delays == [0.75, 1.5, 3.0, 3.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        (Fault("truncate"), "truncated"),
        (Fault("invalid_json"), "invalid"),
        (Fault("oversize", size=4 << 20, declare_length=True), "too_large"),
        (Fault("oversize", size=4 << 20), "too_large"),
        (Fault("gzip_bomb", size=64 << 20), "too_large"),
        (Fault("status", status=404), "http_status"),
    ],
    ids=["truncate", "invalid_json", "oversize_length", "oversize_chunked", "gzip_bomb", "404"],
)
async def test_bad_answers_are_counted_and_the_state_kept(
    server: FeedServer, feed: tuple[HttpFeed, Recorder], fault: Fault, kind: str
) -> None:
    f, sleep = feed
    state = await next_state(f, None)
    server.store.apply({"wg0": [peer(220)]})
    server.inject(fault)
    # The faulty answer is for a since= request; the retry brings the delta.
    new = await next_state(f, state)
    assert f.stats.errors == {kind: 1}
    assert len(sleep.delays) == 1
    assert new == expected(server)


async def test_oversized_body_is_cut_off_while_streaming(
    server: FeedServer, feed: tuple[HttpFeed, Recorder]
) -> None:
    f, _ = feed
    server.inject(Fault("oversize", size=256 << 20))
    await next_state(f, None)
    assert f.stats.errors["too_large"] == 1
    # The client hung up after ~1 MiB; the server could not push anywhere near 256 MiB.
    assert server.oversize_sent < 64 << 20


async def test_timeout(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, _ = feed
    server.inject(Fault("delay", seconds=3.0))  # > long_poll 0.2 + margin 2
    state = await next_state(f, None)
    assert f.stats.errors == {"timeout": 1}
    assert state == expected(server)


async def test_duplicate_allowed_ip_is_rejected_then_watched(
    server: FeedServer, feed: tuple[HttpFeed, Recorder], caplog: pytest.LogCaptureFixture
) -> None:
    f, _ = feed
    state = await next_state(f, None)
    bad = server.store.apply({"wg0": [peer(230, ip="10.44.0.1/32")]})  # peer 1's address
    pending = asyncio.create_task(f.next(state))
    await asyncio.sleep(0.8)
    assert not pending.done()
    assert f.stats.errors["invalid"] == 1
    # After the rejection the client long-polls on the bad version, not on a loop of fulls.
    assert server.last_since == bad
    assert f.stats.answers["not_modified"] >= 1
    assert any("an allowed IP" in r.getMessage() for r in caplog.records)
    server.store.apply(remove={"wg0": [KEYS[230]]})
    new = await asyncio.wait_for(pending, 5)
    assert new == expected(server)
    assert f.stats.answers["gap"] == 1  # the delta from the bad version cannot apply


async def test_bad_full_snapshot_keeps_nothing(server: FeedServer, token_file: Path) -> None:
    server.store.apply({"wg0": [peer(231, ip="10.44.0.1/32")]})
    sleep = Recorder()
    async with make_feed(server, token_file, sleep) as f:
        pending = asyncio.create_task(f.next(None))
        await asyncio.sleep(0.5)
        assert not pending.done() and f.stats.errors["invalid"] == 1
        server.store.apply(remove={"wg0": [KEYS[231]]})
        assert await asyncio.wait_for(pending, 5) == expected(server)


async def test_bad_token_then_rotated(
    server: FeedServer, feed: tuple[HttpFeed, Recorder], token_file: Path
) -> None:
    f, _ = feed
    server.token = b"other"
    pending = asyncio.create_task(f.next(None))
    await asyncio.sleep(0.3)
    assert f.stats.errors["auth"] >= 1 and not pending.done()
    token_file.write_bytes(b"other\n")  # read again for every request: no restart needed
    assert await asyncio.wait_for(pending, 5) == expected(server)


async def test_unreadable_token_file(
    server: FeedServer, feed: tuple[HttpFeed, Recorder], token_file: Path
) -> None:
    f, _ = feed
    os.chmod(token_file, 0o644)
    pending = asyncio.create_task(f.next(None))
    await asyncio.sleep(0.2)
    assert f.stats.errors["token"] >= 1 and server.requests == 0
    os.chmod(token_file, 0o600)
    assert await asyncio.wait_for(pending, 5) == expected(server)


async def test_server_down_for_a_while(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, sleep = feed
    state = await next_state(f, None)
    await server.stop()
    pending = asyncio.create_task(f.next(state))
    await asyncio.sleep(0.5)
    assert not pending.done() and f.stats.errors["connect"] >= 2
    age_before = f.stats.last_success
    server.store.apply({"wg0": [peer(240)]})
    await server.start()  # same port
    new = await asyncio.wait_for(pending, 5)
    assert new == expected(server)
    assert f.stats.last_success is not None and age_before is not None
    assert f.stats.last_success > age_before
    assert sleep.delays[:3] == [0.75, 1.5, 3.0]


async def test_gzip_is_accepted(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, _ = feed
    await next_state(f, None)
    assert server.gzipped_answers == 1


async def test_users_ride_along(server: FeedServer, feed: tuple[HttpFeed, Recorder]) -> None:
    f, _ = feed
    user = {"username": "u48151623", "password_hash": "scrypt$16384$8$1$c2FsdA==$aGFzaA=="}
    state = await next_state(f, None)
    server.store.apply(upsert_users=[user])
    state = await next_state(f, state)
    assert list(state.users) == ["u48151623"]
    server.store.apply(remove_users=["u48151623"])
    state = await next_state(f, state)
    assert state.users == {}


async def test_a_full_snapshot_answering_since_is_taken_as_full(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that lost its history may answer ``since=`` with a snapshot: not a delta."""
    from aiohttp import web

    versions = iter(["v1", "v2"])
    seen: list[str | None] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append(request.query.get("since"))
        version = next(versions)
        doc = {"version": version, "full": True, "wireguard": {"wg0": {"peers": [peer(1)]}}}
        return web.json_response(doc)

    app = web.Application()
    app.router.add_get("/feed", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    config = FeedConfig(
        url=f"http://127.0.0.1:{port}/feed", path=None, token_file=str(token_file),
        ca_file=None, long_poll=0.2, max_removal_ratio=0.5, max_bytes=1 << 20,
    )  # fmt: skip
    try:
        async with HttpFeed(config, sleep=Recorder(), rand=lambda: 0.5, min_interval=0.0) as f:
            first = await next_state(f, None)
            second = await next_state(f, first)
    finally:
        await runner.cleanup()
    assert seen == [None, "v1"] and second.version == "v2"
    assert f.stats.answers["full"] == 2 and f.stats.answers["delta"] == 0
    updates = [r.getMessage() for r in caplog.records if "feed_update" in r.getMessage()]
    assert len(updates) == 2 and all("kind=full" in m for m in updates), updates
