"""The status document; HTTP endpoints, token and TLS; /metrics under promtool; the CLI view."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import RawTestServer, TestClient
from prometheus_client import generate_latest

from nodeagent import __version__
from nodeagent.cli.status import main_status, render
from nodeagent.config.agent import HTTPConfig, TLSConfig
from nodeagent.core.sync import SyncOutcome
from nodeagent.load.counters import LinkCounters
from nodeagent.load.meter import PROBLEM_INTERFACE_MISSING, LoadReport
from nodeagent.publish.http import HttpServer, Sources, make_handler
from nodeagent.publish.metrics import AgentMetrics, MirroredState
from nodeagent.publish.status import StatusBoard, encode, status_document

T0 = datetime(2026, 11, 21, 12, 0, 0, 123456, tzinfo=UTC)
REPORT = LoadReport(37, 37, 12, 370_000_000, 365_000_000, 1_000_000_000, 60)
TOKEN = b"s3cret-token"


def test_document_matches_design() -> None:
    doc = status_document("nl-ams-01", "0.1.0", T0, REPORT)
    assert doc == {
        "node": "nl-ams-01",
        "generated_at": "2026-11-21T12:00:00Z",
        "agent_version": "0.1.0",
        "status": "ok",
        "load": {
            "percent": 37,
            "link_percent": 37,
            "cpu_percent": 12,
            "rx_bps": 370000000,
            "tx_bps": 365000000,
            "capacity_bps": 1000000000,
            "window_seconds": 60,
        },
    }
    assert all(type(v) is int for v in doc["load"].values())  # type: ignore[attr-defined]
    assert json.loads(encode(doc)) == doc


def test_document_degraded_lists_problems() -> None:
    report = LoadReport(5, None, 5, None, None, 10**9, 60, (PROBLEM_INTERFACE_MISSING,))
    doc = status_document("n1", "0.1.0", T0, report, ["sync_failing", "sync_failing"])
    assert doc["status"] == "degraded"
    assert doc["problems"] == ["load_interface_missing", "sync_failing"]
    assert doc["load"]["rx_bps"] is None  # type: ignore[index]
    assert status_document("n1", "0.1.0", T0, None)["status"] == "degraded"


def test_fractional_resolution_keeps_fraction() -> None:
    report = LoadReport(37.5, 37.5, 2.5, 375_000_000, 0, 10**9, 60.0)
    load = status_document("n1", "0.1.0", T0, report)["load"]
    assert load["percent"] == 37.5 and load["window_seconds"] == 60  # type: ignore[index]


# --- the app ---------------------------------------------------------------------


class State:
    """Stands in for the agent: counts how often the endpoints read it."""

    def __init__(self) -> None:
        self.board = StatusBoard("nl-ams-01", __version__, clock=lambda: T0)
        self.board.update(REPORT)
        self.metrics = AgentMetrics(self.snapshot)
        first = SyncOutcome("wg0", 20_000, 0, 0, 0, 8_500.0)
        second = SyncOutcome("wg0", 3, 1, 2, 19_997, 12.0)
        for outcome in (first, second):
            self.metrics.record(outcome)
            self.metrics.reconcile_passes.inc()
        self.metrics.reconcile_errors.inc()
        self.metrics.feed_errors.inc(3)
        self.metrics.push_successes.inc(10)
        self.metrics.push_failures.inc(2)
        self.snapshots = 0
        self.ready_reason: str | None = "first_reconcile_pending"

    def snapshot(self) -> MirroredState:
        self.snapshots += 1
        return MirroredState(
            load=REPORT,
            links={"eth0": LinkCounters(2, 2**40, 2**35)},
            peers={"wg0": 20_001},
            held={"wg0": (0, 0)},
            feed_age_seconds=12.5,
            ready=self.ready_reason is None,
            services={"reconciler": True, "load": False},
        )

    def sources(self) -> Sources:
        return Sources(
            status=lambda: self.board.body,
            registry=self.metrics.registry,
            health=lambda: None,
            ready=lambda: self.ready_reason,
        )


@pytest.fixture
async def state_client() -> AsyncIterator[tuple[State, TestClient[aiohttp.web.BaseRequest, None]]]:
    state = State()
    async with TestClient(RawTestServer(make_handler(state.sources(), lambda: TOKEN))) as client:
        yield state, client


AUTH = {"Authorization": "Bearer " + TOKEN.decode()}


async def test_status_endpoint(state_client: tuple[State, TestClient]) -> None:  # type: ignore[type-arg]
    state, client = state_client
    resp = await client.get("/status", headers=AUTH)
    assert resp.status == 200
    assert resp.content_type == "application/json"
    body = await resp.read()
    assert body == state.board.body
    assert json.loads(body)["load"]["percent"] == 37


@pytest.mark.parametrize("path", ["/status", "/metrics"])
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Bearer " + TOKEN.decode()[:-1]},
        {"Authorization": "Basic " + TOKEN.decode()},
        {"Authorization": "Bearer s3cret-tokén"},
    ],
)
async def test_token_required(
    state_client: tuple[State, TestClient],  # type: ignore[type-arg]
    path: str,
    headers: dict[str, str],
) -> None:
    _, client = state_client
    resp = await client.get(path, headers=headers)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await client.get(path, headers=AUTH)).status == 200


@pytest.mark.parametrize(
    ("method", "path", "authorized", "expected"),
    [
        ("HEAD", "/status", True, 200),
        ("HEAD", "/healthz", False, 200),
        ("POST", "/status", False, 401),  # the token first: a 405 would confirm the path
        ("POST", "/status", True, 405),
        ("DELETE", "/healthz", False, 405),
        ("GET", "/status/", True, 404),
        ("GET", "/", False, 404),
        ("POST", "/nowhere", True, 404),
        ("GET", "/status?x=1", True, 200),
    ],
)
async def test_paths_and_methods(
    state_client: tuple[State, TestClient],  # type: ignore[type-arg]
    method: str,
    path: str,
    authorized: bool,
    expected: int,
) -> None:
    _, client = state_client
    resp = await client.request(method, path, headers=AUTH if authorized else {})
    assert resp.status == expected
    if expected == 405:
        assert resp.headers["Allow"] == "GET,HEAD"
    if method == "HEAD":
        assert await resp.read() == b""


@pytest.mark.parametrize(("expect", "status"), [("100-continue", 200), ("", 200), ("x", 417)])
async def test_expect_header(
    state_client: tuple[State, TestClient],  # type: ignore[type-arg]
    expect: str,
    status: int,
) -> None:
    _, client = state_client
    resp = await client.get("/healthz", headers={"Expect": expect})
    assert resp.status == status


async def test_probes_need_no_token(state_client: tuple[State, TestClient]) -> None:  # type: ignore[type-arg]
    state, client = state_client
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert (await resp.text()).strip() == "first_reconcile_pending"
    state.ready_reason = None
    assert (await client.get("/readyz")).status == 200


async def test_metrics_content(state_client: tuple[State, TestClient]) -> None:  # type: ignore[type-arg]
    state, client = state_client
    resp = await client.get("/metrics", headers=AUTH)
    assert resp.status == 200
    text = await resp.text()
    for line in [
        "nodeagent_load_percent 37.0",
        "nodeagent_load_receive_bytes_per_second 4.625e+07",
        'nodeagent_interface_receive_bytes_total{interface="eth0"} 1.099511627776e+12',
        'nodeagent_reconcile_peer_operations_total{interface="wg0",operation="added"} 20003.0',
        'nodeagent_reconcile_duration_seconds_bucket{interface="wg0",le="10.0"} 2.0',
        'nodeagent_reconcile_duration_seconds_bucket{interface="wg0",le="0.01"} 0.0',
        'nodeagent_reconcile_duration_seconds_count{interface="wg0"} 2.0',
        'nodeagent_wireguard_peers{interface="wg0"} 20001.0',
        "nodeagent_feed_age_seconds 12.5",
        "nodeagent_feed_errors_total 3.0",
        "nodeagent_push_failures_total 2.0",
        "nodeagent_reconcile_errors_total 1.0",
        'nodeagent_service_up{service="load"} 0.0',
        'nodeagent_service_up{service="reconciler"} 1.0',
    ]:
        assert line in text.splitlines(), line
    assert re.search(r'^nodeagent_build_info\{python="[^"]+",version="0\.1\.0"\} 1\.0$', text, re.M)
    names = {m.group(1) for m in re.finditer(r"^([a-z_]+)[{ ]", text, re.M)}
    assert names and all(n.startswith("nodeagent_") for n in names)
    labels = set(re.findall(r"([a-z_]+)=\"", text))
    assert labels <= {"interface", "operation", "le", "version", "python", "problem", "service"}
    assert state.snapshots == 1
    # The process's own figures: resident memory, CPU time, open files.
    for name in ("resident_memory_bytes", "cpu_seconds_total", "open_fds"):
        assert re.search(rf"^nodeagent_process_{name} \S+$", text, re.M), name
    assert "_created" not in text


async def test_metrics_pass_promtool(state_client: tuple[State, TestClient]) -> None:  # type: ignore[type-arg]
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/ensure-apt prometheus", pytrace=False)
    state, client = state_client
    state.ready_reason = None
    text = await (await client.get("/metrics", headers=AUTH)).read()
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == b"" and result.stderr.strip() == b"", result


async def test_promtool_catches_bad_exposition() -> None:
    """The promtool check above can fail: a counter without _total is refused."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is missing: scripts/ensure-apt prometheus", pytrace=False)
    bad = b"# HELP x_bytes a\n# TYPE x_bytes counter\nx_bytes 1\n"
    result = subprocess.run([promtool, "check", "metrics"], input=bad, capture_output=True)
    assert result.returncode != 0 or result.stdout or result.stderr


async def test_scrape_never_touches_the_sampler() -> None:
    """Scrapes and /status read caches: a sampler whose reader counts calls sees none."""
    from nodeagent.config.agent import LoadConfig
    from nodeagent.load.sampler import LoadSampler

    class Reader:
        calls = 0

        def read(self, names: object) -> dict[str, LinkCounters]:
            Reader.calls += 1
            return {"eth0": LinkCounters(2, Reader.calls * 10**6, 0)}

        def close(self) -> None:
            pass

    class Cpu:
        def percent(self) -> float:
            return 3.0

    board = StatusBoard("n1", __version__)
    clock = iter(float(i) for i in range(100))
    sampler = LoadSampler(
        LoadConfig(("eth0",), 10**9, 1.0, 10.0, 1.0),
        reader=Reader(),  # type: ignore[arg-type]
        cpu=Cpu(),  # type: ignore[arg-type]
        clock=lambda: next(clock),
        on_report=lambda r: board.update(r),
    )
    await sampler.sample_once()
    await sampler.sample_once()
    sources = Sources(
        status=lambda: board.body,
        registry=AgentMetrics(
            lambda: MirroredState(load=sampler.meter.report, links=sampler.links)
        ).registry,
        health=lambda: None,
        ready=lambda: None,
    )
    async with TestClient(RawTestServer(make_handler(sources))) as client:
        for _ in range(20):
            assert (await client.get("/status")).status == 200
            assert (await client.get("/metrics")).status == 200
    assert Reader.calls == 2
    assert json.loads(board.body)["load"]["rx_bps"] == 10_000_000


def test_no_secret_or_address_in_outputs() -> None:
    state = State()
    text = generate_latest(state.sources().registry).decode() + state.board.body.decode()
    assert not re.search(r"\d+\.\d+\.\d+\.\d+(?!e)", text.replace("e+0", "E"))
    assert TOKEN.decode() not in text


# --- a real server: TLS, and the CLI view -------------------------------------------


def self_signed(tmp: Path) -> tuple[str, str]:
    cert, key = tmp / "cert.pem", tmp / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-nodes", "-days", "1", "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    os.chmod(key, 0o600)
    return str(cert), str(key)


async def test_tls_and_token_from_files(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    token_file = tmp_path / "http.token"
    token_file.write_bytes(TOKEN + b"\n")
    token_file.chmod(0o600)
    config = HTTPConfig(("127.0.0.1:0",), str(token_file), TLSConfig(cert, key))
    state = State()
    async with HttpServer.from_config(config, state.sources()) as server:
        port = server.ports[0]
        ctx = ssl.create_default_context(cafile=cert)
        async with aiohttp.ClientSession() as session:
            url = f"https://localhost:{port}/status"
            async with session.get(url, ssl=ctx, headers=AUTH) as resp:
                assert resp.status == 200
                assert await resp.read() == state.board.body
            async with session.get(url, ssl=ctx) as resp:
                assert resp.status == 401
            with pytest.raises(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/status", headers=AUTH) as r:
                    await r.read()


async def test_status_cli(tmp_path: Path) -> None:
    token_file = tmp_path / "http.token"
    token_file.write_bytes(TOKEN)
    token_file.chmod(0o600)
    state = State()
    config = HTTPConfig(("127.0.0.1:0",), str(token_file), None)
    async with HttpServer.from_config(config, state.sources()) as server:
        url = f"http://127.0.0.1:{server.ports[0]}/status"
        out = io.StringIO()
        # urllib blocks: run it off the loop that serves the request.
        code = await asyncio.to_thread(main_status, url, str(token_file), out)
        assert code == 0
        assert "nl-ams-01" in out.getvalue()
        assert "37%  (link 37%, cpu 12%)" in out.getvalue()
        assert "rx 370 Mbit/s, tx 365 Mbit/s of 1 Gbit/s, averaged over 60 s" in out.getvalue()
        assert await asyncio.to_thread(main_status, url, None, io.StringIO()) == 1
    # Nobody listens there any more.
    assert await asyncio.to_thread(main_status, url, None, io.StringIO()) == 1


def test_render_degraded() -> None:
    doc = status_document("n1", "0.1.0", T0, None, ["sync_failing"])
    text = render(json.loads(encode(doc)))
    assert "degraded (load_no_data, sync_failing)" in text
    assert "unknown" in text


def test_threadsafe_reconcile_metrics() -> None:
    metrics = AgentMetrics(MirroredState, process=False)

    def work() -> None:
        for _ in range(500):
            metrics.record(SyncOutcome("wg0", 1, 0, 0, 0, 1.0))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = generate_latest(metrics.registry).decode()
    assert 'nodeagent_reconcile_duration_seconds_count{interface="wg0"} 2000.0' in text
    assert (
        'nodeagent_reconcile_peer_operations_total{interface="wg0",operation="added"} 2000.0'
        in text
    )
