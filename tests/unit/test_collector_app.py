"""The collector on a real aiohttp server: the push path, staleness, caching, restart, reload."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest

from nodeagent.central.collector.config import CollectorConfig, NodeConfig
from nodeagent.central.collector.service import Collector
from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import signed_headers
from nodeagent.publish.status import encode, status_document

T0 = 1_800_000_000.0
SECRETS = {"nl-ams-01": b"secret-one", "de-fra-01": b"secret-two"}


def node(name: str, code: str, city: str, country: str) -> NodeConfig:
    return NodeConfig(
        name, f"{name}.example.net", city, country, code, "x", city[:3].upper(), "", ""
    )


NODES = (
    node("nl-ams-01", "nl", "Amsterdam", "Netherlands"),
    node("de-fra-01", "de", "Frankfurt", "Germany"),
)


def config(tmp: Path, stale_after: float = 180.0) -> CollectorConfig:
    return CollectorConfig(
        path=str(tmp / "c.yaml"),
        listen=("127.0.0.1:0",),
        database=str(tmp / "h.sqlite"),
        stale_after=stale_after,
        source="push",
        prometheus=None,
        nodes=NODES,
    )


class Clock:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> float:
        return self.t


def body_for(name: str, percent: int = 37, capacity: int = 1_000_000_000) -> bytes:
    report = LoadReport(percent, percent, 5, percent * capacity // 100, 1000, capacity, 60)
    return encode(status_document(name, "0.1.0", datetime.fromtimestamp(T0, UTC), report))


class Harness:
    def __init__(self, collector: Collector, session: aiohttp.ClientSession, clock: Clock) -> None:
        self.collector = collector
        self.session = session
        self.clock = clock
        self.url = f"http://127.0.0.1:{collector.ports[0]}"

    async def push(
        self,
        name: str,
        body: bytes | None = None,
        *,
        ts: int | None = None,
        secret: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, str]:
        body = body_for(name) if body is None else body
        ts = int(self.clock()) if ts is None else ts
        h = signed_headers(name, secret or SECRETS.get(name, b"?"), ts, body)
        h.update(headers or {})
        async with self.session.post(f"{self.url}/api/v1/push", data=body, headers=h) as r:
            return r.status, await r.text()

    async def get(self, path: str, **headers: str) -> aiohttp.ClientResponse:
        async with self.session.get(self.url + path, headers=headers) as r:
            await r.read()
            return r

    async def json(self, path: str) -> dict[str, object]:
        async with self.session.get(self.url + path) as r:
            assert r.status == 200
            doc: dict[str, object] = await r.json()
            return doc

    def counted(self, outcome: str) -> float:
        return (
            self.collector.metrics.registry.get_sample_value(
                "nodeagent_collector_pushes_total", {"outcome": outcome}
            )
            or 0.0
        )


@pytest.fixture
async def h(tmp_path: Path) -> AsyncIterator[Harness]:
    clock = Clock()
    collector = Collector(
        config(tmp_path, stale_after=180), SECRETS, clock=clock, tick_interval=3600
    )
    async with collector, aiohttp.ClientSession() as session:
        yield Harness(collector, session, clock)


async def test_a_good_push_shows_and_a_replay_is_refused(h: Harness) -> None:
    assert await h.push("nl-ams-01") == (204, "")
    assert await h.push("nl-ams-01") == (409, "replay\n")
    await h.collector.tick()
    servers = (await h.json("/api/v1/servers"))["servers"]
    assert isinstance(servers, list)
    ams = servers[0]
    assert ams["online"] is True and ams["load_percent"] == 37.0
    assert ams["rx_bps"] == 370_000_000 and ams["capacity_bps"] == 1_000_000_000
    assert ams["history"] == [[int(T0) // 900 * 900, 37.0]]
    assert servers[1]["online"] is False and servers[1]["load_percent"] is None
    traffic = await h.json("/api/traffic.json")
    assert traffic["nl-ams-01.example.net"] == {
        "timestamp": int(T0), "bandwidth_in": 370000, "bandwidth_out": 1, "bandwidth_max": 1000000
    }  # fmt: skip
    assert traffic["de-fra-01.example.net"] == {
        "timestamp": int(T0), "bandwidth_in": -1, "bandwidth_out": -1, "bandwidth_max": -1
    }  # fmt: skip
    assert (h.counted("accepted"), h.counted("replay")) == (1, 1)


async def test_refusals_are_answered_and_counted(h: Harness) -> None:
    ams = "nl-ams-01"
    assert await h.push(ams, secret=b"wrong") == (401, "bad_signature\n")
    assert await h.push("xx-nowhere-01") == (401, "bad_signature\n")
    assert await h.push(ams, ts=int(T0) - 301) == (401, "timestamp_out_of_window\n")
    assert await h.push(ams, ts=int(T0) + 301) == (401, "timestamp_out_of_window\n")
    status, _ = await h.push(ams, headers={"X-Nodeagent-Signature": "sha256=00"})
    assert status == 401
    async with h.session.post(f"{h.url}/api/v1/push", data=b"{}") as r:
        assert (r.status, await r.text()) == (400, "missing_node\n")
    # Signed by the right node, but not its status document.
    for body in (
        b"not json",
        b"[]",
        body_for("de-fra-01"),  # another node's document
        json.dumps({"node": ams}).encode(),
        body_for(ams).replace(b'"percent":37', b'"percent":"37"'),
        body_for(ams).replace(b'"percent":37', b'"percent":-1'),
        body_for(ams).replace(b'"status":"ok"', b'"status":"fine"'),
    ):
        h.clock.t += 1
        assert await h.push(ams, body) == (400, "bad_document\n"), body
    assert await h.push(ams, b" " * (64 << 10) + body_for(ams)) == (413, "too_large\n")
    assert h.counted("bad_document") == 7 and h.counted("too_large") == 1
    assert h.counted("bad_signature") == 3 and h.counted("accepted") == 0
    # None of it changed what is shown; a good push still goes through.
    h.clock.t += 1
    assert await h.push(ams) == (204, "")


async def test_a_silent_server_goes_offline(h: Harness) -> None:
    assert await h.push("nl-ams-01") == (204, "")
    await h.collector.tick()
    assert h.collector.fleet.snapshot.online == 1
    h.clock.t += 180
    await h.collector.tick()
    assert h.collector.fleet.snapshot.online == 1
    h.clock.t += 1
    await h.collector.tick()
    assert h.collector.fleet.snapshot.online == 0
    traffic = await h.json("/api/traffic.json")
    assert traffic["nl-ams-01.example.net"]["bandwidth_in"] == -1  # type: ignore[index]
    page = await (await h.session.get(h.url + "/")).text()
    assert "0 of 2 servers online" in page


async def test_etag_and_304_follow_the_snapshot(h: Harness) -> None:
    for path in ("/", "/api/traffic.json", "/api/serverlocations.json", "/api/v1/servers"):
        first = await h.get(path)
        assert first.status == 200
        etag = first.headers["ETag"]
        assert first.headers["Cache-Control"] == "public, max-age=10"
        again = await h.get(path, **{"If-None-Match": etag})
        assert again.status == 304 and again.headers["ETag"] == etag
        assert (await h.get(path, **{"If-None-Match": '"other"'})).status == 200
    page = await h.get("/")
    assert page.headers["Content-Security-Policy"].startswith("default-src 'none'; ")
    etag = page.headers["ETag"]
    assert await h.push("nl-ams-01") == (204, "")
    # The page changes at the next tick, not with every push.
    assert (await h.get("/", **{"If-None-Match": etag})).status == 304
    await h.collector.tick()
    assert (await h.get("/", **{"If-None-Match": etag})).status == 200


async def test_static_files_and_the_rest(h: Harness) -> None:
    page = await (await h.session.get(h.url + "/")).text()
    css = page.split('rel="stylesheet" href="', 1)[1].split('"')[0]
    assert css.startswith("/static/style.css?v=")
    icon = await h.get(page.split('rel="icon" href="', 1)[1].split('"')[0])
    assert icon.status == 200 and icon.headers["Content-Type"] == "image/svg+xml"
    r = await h.get(css)
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/css")
    assert (await h.get("/static/nothing.js")).status == 404
    assert (await h.get("/nowhere")).status == 404
    assert (await h.get("/api/v1/push")).status == 405
    async with h.session.post(h.url + "/") as resp:
        assert resp.status == 405
    metrics = await (await h.session.get(h.url + "/metrics")).text()
    assert 'nodeagent_collector_node_online{node="nl-ams-01"} 0.0' in metrics
    assert (await (await h.session.get(h.url + "/healthz")).text()) == "ok\n"


async def test_history_and_replay_guard_survive_a_restart(tmp_path: Path) -> None:
    clock = Clock()
    async with aiohttp.ClientSession() as session:
        first = Collector(
            config(tmp_path), SECRETS, clock=clock, tick_interval=3600, publish_every=0
        )
        async with first:
            h = Harness(first, session, clock)
            assert await h.push("nl-ams-01") == (204, "")
            await first.tick()
        clock.t += 30
        second = Collector(
            config(tmp_path), SECRETS, clock=clock, tick_interval=3600, publish_every=0
        )
        async with second:
            h = Harness(second, session, clock)
            ams = second.fleet.snapshot.servers[0]
            assert ams.online and ams.percent == 37.0
            assert ams.history == ((int(T0) // 900 * 900, 37.0),)
            # The push from before the restart, sent again, is still a replay.
            assert await h.push("nl-ams-01", ts=int(T0)) == (409, "replay\n")
            assert await h.push("nl-ams-01") == (204, "")


async def test_reload_takes_new_nodes_and_secrets(h: Harness) -> None:
    new = config(Path(h.collector.config.path).parent)
    ams = NODES[0]
    extra = node("se-sto-01", "se", "Stockholm", "Sweden")
    from dataclasses import replace

    new = replace(new, nodes=(ams, extra))
    h.collector.reload(new, {"nl-ams-01": b"rotated", "se-sto-01": b"s3"})
    assert await h.push("nl-ams-01") == (401, "bad_signature\n")
    assert await h.push("nl-ams-01", secret=b"rotated") == (204, "")
    assert await h.push("de-fra-01") == (401, "bad_signature\n")
    assert await h.push("se-sto-01", secret=b"s3") == (204, "")
    await h.collector.tick()
    assert [s.config.name for s in h.collector.fleet.snapshot.servers] == ["nl-ams-01", "se-sto-01"]


async def test_gzip_once_and_new_figures_at_most_every_publish_every(tmp_path: Path) -> None:
    clock = Clock()
    collector = Collector(config(tmp_path), SECRETS, clock=clock, tick_interval=3600)
    async with collector, aiohttp.ClientSession(auto_decompress=False) as session:
        h = Harness(collector, session, clock)
        plain = await h.get("/", **{"Accept-Encoding": "identity"})
        gz = await h.get("/", **{"Accept-Encoding": "br, gzip;q=0.5"})
        assert gz.headers["Content-Encoding"] == "gzip" and "Content-Encoding" not in plain.headers
        assert gz.headers["ETag"] == plain.headers["ETag"][:-1] + '-gz"'
        assert gz.headers["Vary"] == "Accept-Encoding"
        again = await h.get("/", **{"If-None-Match": gz.headers["ETag"],
                                                  "Accept-Encoding": "gzip"})  # fmt: skip
        assert again.status == 304
        version = collector.fleet.snapshot.version
        assert await h.push("nl-ams-01") == (204, "")  # comes online: published at once
        await collector.tick()
        assert collector.fleet.snapshot.version == version + 1
        clock.t += 1
        assert await h.push("nl-ams-01") == (204, "")  # a new figure: waits for publish_every
        await collector.tick()
        assert collector.fleet.snapshot.version == version + 1
        clock.t += 5
        await collector.tick()
        assert collector.fleet.snapshot.version == version + 2


async def test_a_failed_history_write_is_counted_and_retried(h: Harness) -> None:
    import sqlite3

    store = h.collector._store
    assert store is not None
    real = store.write
    calls: list[int] = []

    def failing(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise sqlite3.OperationalError("disk I/O error")
        real(*args, **kwargs)  # type: ignore[arg-type]

    store.write = failing  # type: ignore[method-assign]
    assert await h.push("nl-ams-01") == (204, "")
    await h.collector.tick()
    errors = h.collector.metrics.registry.get_sample_value("nodeagent_collector_store_errors_total")
    assert errors == 1
    assert h.collector.fleet.pending and h.collector.fleet.changed == {"nl-ams-01"}
    await h.collector.tick()
    assert not h.collector.fleet.pending and not h.collector.fleet.changed
    assert store.counts() == (1, 0)
