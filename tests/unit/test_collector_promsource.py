"""``source: prometheus``: the answer parsed (pure), and the poller against a fake query API."""

from __future__ import annotations

import json

import aiohttp
import pytest
from aiohttp import web

from nodeagent.central.collector.config import NodeConfig, PrometheusSource
from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.fleet import Fleet
from nodeagent.central.collector.promsource import (
    QUERY,
    PrometheusPoller,
    SourceError,
    parse_answer,
)


def series(name: str | None, node: str, value: str, at: float = 100.0, **extra: str) -> object:
    metric = {"node": node, "instance": "x:9586", "job": "nodeagent", **extra}
    if name is not None:
        metric["__name__"] = name
    return {"metric": metric, "value": [at, value]}


def answer(*result: object) -> bytes:
    return json.dumps(
        {"status": "success", "data": {"resultType": "vector", "result": list(result)}}
    ).encode()


ANSWER = answer(
    series("nodeagent_load_percent", "a", "37"),
    series("nodeagent_load_receive_bytes_per_second", "a", "1250000"),
    series("nodeagent_load_transmit_bytes_per_second", "a", "625000"),
    series("nodeagent_load_capacity_bytes_per_second", "a", "12500000"),
    series(None, "a", "95.5", nodeagent_value="timestamp"),
    series("nodeagent_load_percent", "b", "5"),
    series("nodeagent_load_receive_bytes_per_second", "c", "1"),  # no percent: no figure
    {"metric": {"__name__": "nodeagent_load_percent"}, "value": [100, "3"]},  # no node label
)


def test_parse() -> None:
    assert parse_answer(ANSWER, "node") == {
        "a": Reading(95.5, 37.0, 10_000_000, 5_000_000, 100_000_000),
        "b": Reading(100.0, 5.0, None, None, None),
    }
    assert parse_answer(ANSWER, "no_such_label") == {}


@pytest.mark.parametrize(
    "body",
    [
        b"nope",
        b"[]",
        json.dumps({"status": "error", "error": "bad"}).encode(),
        json.dumps({"status": "success", "data": {"resultType": "matrix", "result": []}}).encode(),
        answer("x"),
        answer(series("nodeagent_load_percent", "a", "NaN")),
        answer(series("nodeagent_load_percent", "a", "-1")),
        answer({"metric": {"__name__": "nodeagent_load_percent", "node": "a"}, "value": [1]}),
    ],
)
def test_refused(body: bytes) -> None:
    with pytest.raises(SourceError):
        parse_answer(body, "node")


def node(name: str) -> NodeConfig:
    return NodeConfig(name, f"{name}.example.net", "C", "C", "cc", None, "C", "", "")


async def test_poller_takes_configured_nodes_only() -> None:
    queries: list[str] = []

    async def query(request: web.Request) -> web.Response:
        queries.append(request.query["query"])
        return web.Response(body=ANSWER, content_type="application/json")

    app = web.Application()
    app.router.add_get("/api/v1/query", query)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    fleet = Fleet([node("a"), node("z")], 60)
    poller = PrometheusPoller(PrometheusSource(f"http://127.0.0.1:{port}", 1, "node"), fleet)
    try:
        async with aiohttp.ClientSession() as session:
            assert await poller.poll_once(session) == 1
            assert fleet.latest() == {"a": Reading(95.5, 37.0, 10_000_000, 5_000_000, 100_000_000)}
            # The same sample again is not a new figure.
            assert await poller.poll_once(session) == 0
    finally:
        await runner.cleanup()
    assert queries == [QUERY, QUERY]
