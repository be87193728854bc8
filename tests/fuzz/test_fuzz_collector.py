"""Fuzz target: the status collector's HTTP side, the real ``Collector`` on 127.0.0.1.

* requests schemathesis derives from ``docs/collector-api.yaml``, valid ones and
  (negative mode) ones that break it; pushes are sent unsigned, or signed with
  the node's real secret (then only the document decides): no answer may be a
  5xx, and every answer must conform to the description;
* raw bytes on a TCP socket, as for the agent's server (``test_fuzz_http``):
  whatever arrives, no 5xx, and ``/healthz`` answers 200 right after.

After every example the collector must still take a good push.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import schemathesis
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.core import NotSet

from nodeagent.central.collector.config import CollectorConfig, NodeConfig
from nodeagent.central.collector.service import Collector
from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import signed_headers
from nodeagent.publish.status import encode, status_document
from tests.fuzz.harness import target
from tests.fuzz.test_fuzz_http import exchange, healthz, raw_requests, status_codes

REPO = Path(__file__).resolve().parents[2]
SECRETS = {f"n{i}": f"secret-{i}".encode() for i in range(3)}


class LiveCollector:
    """The collector on a free port, run by an event loop in a thread."""

    def __init__(self, tmp: Path) -> None:
        nodes = tuple(
            NodeConfig(n, f"{n}.example.net", "City", "Country", "cc", "x", "CIT", "1", "2")
            for n in SECRETS
        )
        config = CollectorConfig(
            path=str(tmp / "c.yaml"),
            listen=("127.0.0.1:0",),
            database=str(tmp / "h.sqlite"),
            stale_after=3600,
            source="push",
            prometheus=None,
            nodes=nodes,
        )
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-coll", daemon=True)
        self._thread.start()
        self.collector = Collector(config, SECRETS, tick_interval=0.2)
        asyncio.run_coroutine_threadsafe(self.collector.start(), self.loop).result(30)
        self.port = self.collector.ports[0]
        self.url = f"http://127.0.0.1:{self.port}"
        self._ts = int(time.time())
        self._lock = threading.Lock()

    def timestamp(self) -> int:
        """Strictly newer each call, so a signed push is never a replay by accident."""
        with self._lock:
            self._ts = max(self._ts + 1, int(time.time()))
            return self._ts

    def good_push(self, node: str = "n0") -> int:
        report = LoadReport(42, 42, 7, 4200, 2100, 10_000, 60)
        body = encode(status_document(node, "0.1.0", datetime.now(UTC), report))
        headers = signed_headers(node, SECRETS[node], self.timestamp(), body)
        r = requests.post(f"{self.url}/api/v1/push", data=body, headers=headers, timeout=30)
        return r.status_code

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.collector.close(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCollector]:
    server = LiveCollector(tmp_path_factory.mktemp("collector"))
    for node in SECRETS:
        assert server.good_push(node) == 204
    yield server
    server.close()


SCHEMA = schemathesis.openapi.from_path(REPO / "docs" / "collector-api.yaml")
cases = st.one_of(SCHEMA.as_strategy(), SCHEMA.as_strategy(generation_mode=GenerationMode.NEGATIVE))


def signed(live: LiveCollector, case: schemathesis.Case) -> requests.Response:
    """Send the case's document signed by a real node (its name put into it when it has one)."""
    node = "n1"
    body = case.body
    if isinstance(body, dict) and "node" in body:
        body = {**body, "node": node}
    # Negative cases may come with a body for another media type (bytes or text), or none.
    if isinstance(body, bytes):
        data = body
    elif isinstance(body, str):
        data = body.encode()
    elif isinstance(body, NotSet):
        data = b""
    else:
        data = json.dumps(body).encode()
    headers = signed_headers(node, SECRETS[node], live.timestamp(), data)
    return requests.post(f"{live.url}/api/v1/push", data=data, headers=headers, timeout=30)


@target(150, round_examples=200)
@given(case=cases, sign=st.booleans())
def test_conforms_to_description(live: LiveCollector, case: schemathesis.Case, sign: bool) -> None:
    if case.path == "/api/v1/push" and sign:
        response = signed(live, case)
        assert response.status_code in (204, 400), response.text
        case.validate_response(response, excluded_checks=_NOT_FOR_SIGNED)
    else:
        response = case.call_and_validate(
            base_url=live.url, timeout=30, excluded_checks=_UNSIGNED_EXCLUDED
        )
    assert response.status_code < 500
    assert live.good_push() == 204


# An unsigned push of a valid document is refused (401): by design, not a bug.
_UNSIGNED_EXCLUDED = [schemathesis.checks.positive_data_acceptance]
# The signed request is built here, not by schemathesis: its own request checks do not apply.
_NOT_FOR_SIGNED = [
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.negative_data_rejection,
]


def test_description_covers_every_route() -> None:
    described = {op.ok().path for op in SCHEMA.get_all_operations()}
    assert described == {
        "/api/v1/push", "/", "/api/traffic.json", "/api/serverlocations.json",
        "/api/v1/servers", "/metrics", "/healthz",
    }  # fmt: skip


def assert_up(live: LiveCollector) -> None:
    reply = healthz(live.port)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nok\n"), reply[:200]


@st.composite
def collector_requests(draw: st.DrawFn) -> bytes:
    """The agent target's raw requests, half of them aimed at the collector's own paths."""
    request = draw(raw_requests())
    if draw(st.booleans()):
        path = draw(
            st.sampled_from(
                [b"/", b"/api/v1/push", b"/api/traffic.json", b"/api/v1/servers",
                 b"/?sort=name&order=desc&country=cc", b"/static/app.js", b"/?country=%ff"]
            )
        )  # fmt: skip
        for old in (b"/status", b"/metrics", b"/healthz", b"/readyz"):
            request = request.replace(b" " + old + b" ", b" " + path + b" ", 1)
    if draw(st.booleans()):
        request = request.replace(b"GET ", b"POST ", 1)
    return request


@target(100, round_examples=200)
@given(collector_requests())
def test_raw_requests(live: LiveCollector, request: bytes) -> None:
    for code in status_codes(exchange(live.port, request)):
        assert code < 500, request[:200]
    assert_up(live)
