"""Fuzz target: the HTTP endpoints, served by the real ``HttpServer`` on 127.0.0.1.

Two kinds of input:

* requests schemathesis derives from ``docs/http-api.yaml`` (valid ones and,
  in its negative mode, ones that break the description), with the right
  token or with whatever schemathesis put in ``Authorization``: no answer may
  be a 5xx other than a probe's 503, and every answer must conform to the
  description (status codes, content types, headers, the status document's
  schema, 401 where the token is missing or wrong);
* raw bytes on a TCP socket: broken request lines, huge and non-ASCII
  headers, bad ``Authorization`` values, lying ``Content-Length`` and chunked
  bodies, huge bodies. Whatever the server answers, it must not be a 5xx, and
  a good ``GET /healthz`` right after must answer 200.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import schemathesis
import yaml
from hypothesis import event, given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from nodeagent import __version__
from nodeagent.config.agent import HTTPConfig
from nodeagent.load.counters import LinkCounters
from nodeagent.load.meter import LoadReport
from nodeagent.publish.http import HttpServer, HttpSettings, Sources
from nodeagent.publish.metrics import AgentMetrics, MirroredState
from nodeagent.publish.status import StatusBoard
from tests.fuzz.harness import target

REPO = Path(__file__).resolve().parents[2]
TOKEN = "s3cret-token"
REPORT = LoadReport(37, 37, 12, 370_000_000, 365_000_000, 1_000_000_000, 60)


def _sources() -> Sources:
    board = StatusBoard("nl-ams-01", __version__, clock=lambda: datetime.now(UTC))
    reports = itertools.cycle([REPORT, None])
    problems = itertools.cycle([(), ("feed_stale",)])

    def status() -> bytes:
        # Each request sees the next document: with a report and without, ok and degraded.
        report, extra = next(reports), next(problems)
        return board.update(report, extra) if report else board.clear_report()

    def snapshot() -> MirroredState:
        return MirroredState(
            load=REPORT,
            links={"eth0": LinkCounters(2, 2**40, 2**35)},
            peers={"wg0": 3},
            held={"wg0": (0, 0)},
            feed_age_seconds=12.5,
            ready=True,
            services={"reconciler": True},
        )

    ready = itertools.cycle([None, "first_reconcile_pending", None, "feed_stale age_s=42"])
    return Sources(
        status=status,
        registry=AgentMetrics(snapshot).registry,
        health=lambda: None,
        ready=lambda: next(ready),
    )


class LiveServer:
    """The agent's HTTP server on 127.0.0.1 (a free port), run by an event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz-http", daemon=True)
        self._thread.start()
        config = HTTPConfig(listen=("127.0.0.1:0",), token_file=None, tls=None)
        self.server = HttpServer(_sources(), HttpSettings(config, TOKEN.encode(), None))
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        self.port = self.server.ports[0]
        self.url = f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    server = LiveServer()
    yield server
    server.close()


# --- schemathesis: requests from the description -------------------------------------

SCHEMA = schemathesis.openapi.from_path(REPO / "docs" / "http-api.yaml")
cases = st.one_of(SCHEMA.as_strategy(), SCHEMA.as_strategy(generation_mode=GenerationMode.NEGATIVE))


@target(120, round_examples=200)
@given(case=cases, with_token=st.booleans())
def test_conforms_to_description(
    live: LiveServer, case: schemathesis.Case, with_token: bool
) -> None:
    # Given at the call, the token counts as the caller's own: schemathesis then also
    # checks that the same request without it, or with another, is refused.
    token = {"Authorization": f"Bearer {TOKEN}"} if with_token else None
    # Its own "no 5xx" check would refuse the 503 that /readyz describes.
    response = case.call_and_validate(
        base_url=live.url, headers=token, timeout=10, excluded_checks=[not_a_server_error]
    )
    assert response.status_code < 500 or (response.status_code, case.path) == (503, "/readyz")
    check_text(case.path, response.status_code, response.headers, response.content)


DESCRIPTION = yaml.safe_load((REPO / "docs" / "http-api.yaml").read_text())


def check_text(path: str, status: int, headers: Mapping[str, Any], body: bytes) -> None:
    """A text/plain answer matches its description (schemathesis checks JSON bodies only)."""
    answer = DESCRIPTION["paths"][path]["get"]["responses"].get(str(status))
    if answer is None:
        return
    if "$ref" in answer:
        answer = DESCRIPTION["components"]["responses"][answer["$ref"].rsplit("/", 1)[1]]
    schema = answer.get("content", {}).get("text/plain", {}).get("schema")
    if schema is None:
        return
    text = body.decode()
    if "enum" in schema:
        assert text in schema["enum"], (path, status, text)
    if "pattern" in schema:
        # JSON Schema's $ is the end of the text; Python's also matches before a last newline.
        pattern = schema["pattern"].removesuffix("$") + r"\Z"
        assert re.search(pattern, text), (path, status, text)


def test_description_covers_every_route(live: LiveServer) -> None:
    described = {op.ok().path for op in SCHEMA.get_all_operations()}
    assert described == {"/status", "/metrics", "/healthz", "/readyz"}


# --- raw bytes on a socket ------------------------------------------------------------


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` and read what comes back, until the server closes or goes quiet.

    Quiet means 0.1 s without a byte; then the sending side is closed and the
    rest read until the server hangs up. (aiohttp drops a connection whose
    client half-closed before it answered, so closing at once would hide answers.)
    A server that stops reading (back pressure) or keeps the connection past
    ``timeout`` ends the exchange too: what counts is that it answers the next one.
    """
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        # The server may answer and hang up before it read everything (a 400 to a huge header).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, TimeoutError):
            s.sendall(data)
        with contextlib.suppress(ConnectionResetError, TimeoutError):
            s.settimeout(0.1)
            with contextlib.suppress(TimeoutError):
                while chunk := s.recv(1 << 16):
                    chunks.append(chunk)
            s.settimeout(timeout)
            with contextlib.suppress(BrokenPipeError, OSError):
                s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
    return b"".join(chunks)


def status_codes(reply: bytes) -> list[int]:
    """The status code of every response in ``reply`` (pipelined requests get several)."""
    codes = []
    for line in reply.split(b"\r\n"):
        parts = line.split(b" ", 2)
        if len(parts) >= 2 and parts[0].startswith(b"HTTP/1.") and parts[1].isdigit():
            codes.append(int(parts[1]))
    return codes


methods = st.one_of(
    st.sampled_from(
        [b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"CONNECT"]
    ),
    st.sampled_from([b"get", b"G\x00T", b"GET GET", b"", b"\xff\xfe", b"PRI", b"G" * 5000]),
    st.binary(max_size=10),
)
targets = st.one_of(
    st.sampled_from([b"/status", b"/metrics", b"/healthz", b"/readyz", b"/", b"/nowhere"]),
    st.sampled_from(
        [b"*", b"http://127.0.0.1/status", b"/status?x=1", b"/%", b"/%00", b"/..", b"//status"]
    ),
    st.sampled_from([b"/status#x", b"/\xc3\xa9", b"/\xff", b"/" + b"a" * 10_000, b"", b"status"]),
    st.binary(max_size=20),
)
versions = st.sampled_from(
    [
        b"HTTP/1.1",
        b"HTTP/1.0",
        b"HTTP/0.9",
        b"HTTP/2.0",
        b"HTTP/9.9",
        b"HTTP/1.1\x00",
        b"",
        b"http/1.1",
    ]
)
authorization = st.sampled_from(
    [
        b"Bearer " + TOKEN.encode(),
        b"Bearer " + TOKEN.encode()[:-1],
        b"bearer " + TOKEN.encode(),
        b"Bearer  " + TOKEN.encode() + b" ",
        b"Bearer\t" + TOKEN.encode(),
        b"Bearer \xc3\xa9t\xc3\xa9",
        b"Bearer \xff\xfe\xfd",
        b"Bearer \xed\xa0\x80",
        b"Bearer " + b"x" * 100_000,
        b"Bearer",
        b"Basic dXNlcjpwdw==",
        b"",
        "Bearer токен".encode(),
    ]
)
header_names = st.one_of(
    st.sampled_from(
        [b"Host", b"Authorization", b"Content-Length", b"Transfer-Encoding", b"Connection"]
    ),
    st.sampled_from(
        [b"Expect", b"Upgrade", b"Accept-Encoding", b"X-\xff", b"", b" Host", b"A" * 9000]
    ),
    st.binary(max_size=12),
)
header_values = st.one_of(
    st.sampled_from(
        [b"127.0.0.1", b"-1", b"99999999999999999999", b"1, 2", b"chunked", b"gzip, chunked"]
    ),
    st.sampled_from(
        [b"close", b"keep-alive", b"100-continue", b"websocket", b"h2c", b"\r", b"\x00"]
    ),
    st.sampled_from([b"v" * 9000, b"v" * 70_000]),
    st.binary(max_size=30),
)
headers = st.lists(
    st.one_of(
        st.tuples(st.just(b"Authorization"), authorization),
        st.tuples(header_names, header_values),
    ),
    max_size=3,
)
bodies = st.one_of(
    st.just(b""),
    st.sampled_from([b"0\r\n\r\n", b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"ffffffffffffffff\r\n"]),
    st.binary(max_size=100),
    st.sampled_from([10_000, 1 << 20, 8 << 20]).map(lambda n: b"b" * n),
)
endings = st.sampled_from([b"\r\n", b"\n", b"\r", b"\r\n\r\n", b""])


def usually(
    draw: st.DrawFn, common: st.SearchStrategy[bytes], rare: st.SearchStrategy[bytes], one_in: int
) -> bytes:
    """``rare`` once in ``one_in`` draws (the middle value: Hypothesis favours the ends)."""
    return draw(rare if draw(st.integers(0, one_in - 1)) == one_in // 2 else common)


@st.composite
def raw_requests(draw: st.DrawFn) -> bytes:
    """Requests that are mostly well formed, each with a few hostile parts."""
    eol = usually(draw, st.just(b"\r\n"), st.just(b"\n"), 10)
    method = usually(draw, st.sampled_from([b"GET", b"HEAD"]), methods, 4)
    path = usually(
        draw, st.sampled_from([b"/status", b"/metrics", b"/healthz", b"/readyz"]), targets, 4
    )
    version = usually(draw, st.just(b"HTTP/1.1"), versions, 6)
    head = [b" ".join([method, path, version])]
    if draw(st.integers(0, 5)) != 3:
        head.append(b"Host: 127.0.0.1")
    head += [name + b": " + value for name, value in draw(headers)]
    if draw(st.integers(0, 6)) == 3:
        head += [b"X-Pad-%d: %s" % (i, b"p" * 50) for i in range(draw(st.integers(100, 3000)))]
    request = eol.join(head) + eol + usually(draw, st.just(b"\r\n"), endings, 6)
    request += usually(draw, st.just(b""), bodies, 3)
    if draw(st.integers(0, 4)) == 2:
        # A second request after the first one on the same connection.
        request += b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    return request


def healthz(port: int) -> bytes:
    """``GET /healthz`` with ``Connection: close``, read until the server hangs up.

    Not :func:`exchange`: it half-closes after 0.1 s of quiet, which aiohttp
    takes as the client leaving, so a server slowed by 200 open connections
    would look down. A generous timeout: on a loaded 2-core machine a live
    server may take seconds.
    """
    chunks: list[bytes] = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        while chunk := s.recv(1 << 16):
            chunks.append(chunk)
    return b"".join(chunks)


def assert_up(live: LiveServer) -> None:
    reply = healthz(live.port)
    assert reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nok\n"), reply[:200]


@target(150, round_examples=200)
@given(raw_requests())
def test_raw_requests(live: LiveServer, request: bytes) -> None:
    reply = exchange(live.port, request)
    codes = status_codes(reply)
    event(f"answers {codes[:2]}")
    for code in codes:
        assert code < 500 or code == 503, reply[:300]
    assert_up(live)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /status HTTP/1.1\r\nAuthorization: Bearer \xff\xfe\r\n\r\n",
        b"GET /status HTTP/1.1\r\nAuthorization: Bearer " + b"x" * 1_000_000 + b"\r\n\r\n",
        b"GET /status HTTP/1.1\r\n" + b"X: y\r\n" * 20_000 + b"\r\n",
        b"POST /status HTTP/1.1\r\nContent-Length: 16777216\r\n\r\n" + b"b" * (16 << 20),
        b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
        b"GET " + b"/a" * 100_000 + b" HTTP/1.1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(200),  # a TLS hello on plain HTTP
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        bytes(range(256)) * 64,
    ],
    ids=[
        "auth-bytes",
        "auth-1mb",
        "20k-headers",
        "16mb-body",
        "chunk-size",
        "long-path",
        "tls",
        "h2",
        "binary",
    ],
)
def test_hostile_requests(live: LiveServer, request_bytes: bytes) -> None:
    for code in status_codes(exchange(live.port, request_bytes, timeout=20)):
        assert code < 500, code
    assert_up(live)


def test_many_connections_left_open(live: LiveServer) -> None:
    # Half-sent requests on 200 connections, then a good one: the server still answers.
    held = [socket.create_connection(("127.0.0.1", live.port), timeout=5) for _ in range(200)]
    try:
        for s in held:
            s.sendall(b"GET /status HTTP/1.1\r\nHost: x\r\n")
        assert_up(live)
    finally:
        for s in held:
            s.close()
    assert_up(live)
