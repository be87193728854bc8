"""SIGHUP replaces what a changed configuration asks for: HTTP server, pusher, load sampler, name.

A real agent (fake WireGuard backend) with real aiohttp servers and collectors
on 127.0.0.1. Each test changes the configuration file, reloads, waits for
``state.reloads`` to count the reload and checks what is served and pushed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from nodeagent.config.agent import LogConfig, WireguardInterfaceConfig, load_config
from nodeagent.daemon.agent import Agent
from nodeagent.publish.push import HEADER_NODE, HEADER_SIGNATURE, HEADER_TIMESTAMP, sign
from tests.daemon import free_port
from tests.fakes import FakeBackend
from tests.peerdata import feed_document, make_peers
from tests.unit.test_status_http import self_signed

TOKEN_A, TOKEN_B = "token-a-0123456789", "token-b-9876543210"
SECRET_A, SECRET_B = b"push-secret-a-0123456789", b"push-secret-b-9876543210"


def write_secret(path: Path, content: bytes) -> None:
    path.write_bytes(content)
    path.chmod(0o600)


async def get(port: int, path: str = "/status", token: str | None = None) -> tuple[int, bytes]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # A session per request: no pooled connection outlives the server it went to.
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp,
    ):
        return resp.status, await resp.read()


async def refused(port: int) -> bool:
    try:
        await get(port, "/healthz")
    except aiohttp.ClientConnectorError:
        return True
    return False


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


@dataclass
class Collector:
    """Records every push; always answers 204."""

    pushes: list[tuple[str, int, str, bytes]] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    async def handle(self, request: web.Request) -> web.Response:
        h = request.headers
        self.pushes.append(
            (h[HEADER_NODE], int(h[HEADER_TIMESTAMP]), h[HEADER_SIGNATURE], await request.read())
        )
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/push", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = int(self.runner.addresses[0][1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/push"


@pytest.fixture
async def collectors() -> AsyncIterator[tuple[Collector, Collector]]:
    a, b = Collector(), Collector()
    await a.start()
    await b.start()
    yield a, b
    for c in (a, b):
        assert c.runner is not None
        await c.runner.cleanup()


class Rig:
    """The configuration file and the running agent; ``write`` then ``reload``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.config_path = tmp / "config.yaml"
        self.token_file = tmp / "http.token"
        self.secret_file = tmp / "push.secret"
        self.cert_file, self.key_file = tmp / "http.crt", tmp / "http.key"
        write_secret(self.token_file, TOKEN_A.encode())
        write_secret(self.secret_file, SECRET_A)
        (tmp / "feed.json").write_text(feed_document(make_peers(3), "wgu0"))
        self.fake = FakeBackend("wgu0")
        self.agent: Agent | None = None
        self.logging: list[LogConfig] = []  # what the agent asked the CLI to apply
        self.task: asyncio.Task[None] | None = None

    def write(
        self,
        *,
        node: str = "test-01",
        listen: int | None = None,
        token: bool = True,
        tls: bool = False,
        push: str | None = None,
        load: str | None = None,
        log: str | None = None,
    ) -> None:
        text = (
            f"node: {{name: {node}}}\n"
            "wireguard:\n  interfaces:\n    - {name: wgu0, backend: userspace}\n"
            f"feed: {{path: {self.tmp / 'feed.json'}}}\n"
        )
        if listen is not None:
            auth = f", token_file: {self.token_file}" if token else ""
            if tls:
                auth += f", tls: {{cert_file: {self.cert_file}, key_file: {self.key_file}}}"
            text += f'http: {{listen: ["127.0.0.1:{listen}"]{auth}}}\n'
        if push is not None:
            text += f"push: {{url: {push!r}, secret_file: {self.secret_file}, interval: 1s}}\n"
        if load is not None:
            text += f"load: {load}\n"
        if log is not None:
            text += f"log: {log}\n"
        self.config_path.write_text(text)

    def factory(self, cfg: WireguardInterfaceConfig) -> FakeBackend:
        return self.fake

    async def start(self) -> Agent:
        self.agent = Agent(
            load_config(self.config_path),
            backend_factory=self.factory,
            configure_logging=self.logging.append,
        )
        self.task = asyncio.create_task(self.agent.run())
        await until(lambda: self.agent is not None and self.agent.state.syncs > 0)
        return self.agent

    async def reload(self, send: Callable[[], None] | None = None) -> None:
        assert self.agent is not None
        before = self.agent.state.reloads
        (send or self.agent.request_reload)()
        await until(lambda: self.agent is not None and self.agent.state.reloads > before)

    async def stop(self) -> None:
        if self.agent is not None and self.task is not None:
            self.agent.request_stop()
            await asyncio.wait_for(self.task, 10)


@pytest.fixture
def messages(caplog: pytest.LogCaptureFixture) -> Iterator[list[str]]:
    """The agent's log messages; after the test, none may name an address or a secret."""
    caplog.set_level(logging.DEBUG, logger="nodeagent")
    out: list[str] = []
    yield out
    records = caplog.get_records("setup") + caplog.get_records("call")
    out.extend(r.getMessage() for r in records if r.name.startswith("nodeagent"))
    text = "\n".join(out)
    for secret in ("127.0.0.1", "http://", TOKEN_A, TOKEN_B, SECRET_A.decode(), SECRET_B.decode()):
        assert secret not in text


@pytest.fixture
async def rig(tmp_path: Path, messages: list[str]) -> AsyncIterator[Rig]:
    r = Rig(tmp_path)
    yield r
    await r.stop()


def logged(caplog: pytest.LogCaptureFixture, event: str) -> bool:
    return any(event in r.getMessage() for r in caplog.records if r.name.startswith("nodeagent"))


# -- HTTP ------------------------------------------------------------------------


async def test_rotated_token_takes_effect_on_sighup(rig: Rig) -> None:
    port = free_port()
    rig.write(listen=port)
    await rig.start()
    assert (await get(port, token=TOKEN_A))[0] == 200
    write_secret(rig.token_file, TOKEN_B.encode())
    # Not before the reload: the token is read when the server is built.
    assert (await get(port, token=TOKEN_B))[0] == 401
    await rig.reload(lambda: os.kill(os.getpid(), signal.SIGHUP))
    assert (await get(port, token=TOKEN_A))[0] == 401
    assert (await get(port, token=TOKEN_B))[0] == 200
    assert (await get(port, "/metrics", token=TOKEN_B))[0] == 200


async def test_rotated_token_keeps_listener_and_connections(rig: Rig) -> None:
    """A new token is taken by the running server: a connection made before the reload is served."""
    port = free_port()
    rig.write(listen=port)
    agent = await rig.start()
    server = agent.http
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    write_secret(rig.token_file, TOKEN_B.encode())
    await rig.reload()
    assert agent.http is server
    request = f"GET /status HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN_B}\r\n"
    writer.write(request.encode() + b"Connection: close\r\n\r\n")
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:40]


async def served_certificate(port: int, sock: socket.socket | None = None) -> bytes:
    """The certificate (DER) a TLS handshake on ``sock`` (or a new connection) is given."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if sock is None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    else:
        _, writer = await asyncio.open_connection(sock=sock, ssl=ctx, server_hostname="a")
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True)
    writer.close()
    return bytes(der)


def der(cert_pem: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(Path(cert_pem).read_text())


async def test_renewed_certificate_served_by_the_same_listener(
    rig: Rig, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A renewed certificate reaches handshakes on the running listener; a bad one changes nothing.

    A TCP connection made before the reload does its TLS handshake after it
    and gets the new certificate: the listener and its connections lived on.
    """
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    cert_a, key_a = self_signed(tmp_path / "a")
    cert_b, key_b = self_signed(tmp_path / "b")
    for src, dst in ((cert_a, rig.cert_file), (key_a, rig.key_file)):
        shutil.copy(src, dst)
    port = free_port()
    rig.write(listen=port, tls=True)
    agent = await rig.start()
    server = agent.http
    assert await served_certificate(port) == der(cert_a)
    early = socket.create_connection(("127.0.0.1", port))
    for src, dst in ((cert_b, rig.cert_file), (key_b, rig.key_file)):
        shutil.copy(src, dst)
    await rig.reload()
    assert agent.http is server
    assert await served_certificate(port, early) == der(cert_b)
    assert await served_certificate(port) == der(cert_b)
    # A certificate that does not match its key: logged, and the old one stays.
    shutil.copy(cert_a, rig.cert_file)
    await rig.reload()
    assert logged(caplog, "config_reload http_failed error=SSLError errno=")
    assert agent.http is server
    assert await served_certificate(port) == der(cert_b)


async def test_unchanged_config_replaces_nothing(
    rig: Rig, collectors: tuple[Collector, ...]
) -> None:
    rig.write(listen=free_port(), push=collectors[0].url, load="{interfaces: [lo]}")
    agent = await rig.start()
    services = (agent.http, agent.pusher, agent.sampler)
    await rig.reload()
    assert (agent.http, agent.pusher, agent.sampler) == services


async def test_listen_change_moves_the_server(rig: Rig) -> None:
    old, new = free_port(), free_port()
    rig.write(listen=old)
    await rig.start()
    assert (await get(old, "/healthz"))[0] == 200
    rig.write(listen=new)
    await rig.reload()
    assert (await get(new, token=TOKEN_A))[0] == 200
    assert await refused(old)


async def test_port_in_use_keeps_the_old_server(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    old, taken = free_port(), free_port()
    rig.write(listen=old)
    agent = await rig.start()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        write_secret(rig.token_file, TOKEN_B.encode())
        rig.write(listen=taken)
        await rig.reload()
        assert logged(caplog, "config_reload http_failed error=OSError errno=")
        # The old server, old token and all, serves again.
        assert (await get(old, token=TOKEN_A))[0] == 200
        assert agent.http is not None and agent.http.ports == [old]
    # The agent compares with what it serves, not with the file: the next reload retries.
    await rig.reload()
    assert (await get(taken, token=TOKEN_B))[0] == 200
    assert await refused(old)


async def test_http_section_added_then_removed(rig: Rig) -> None:
    port = free_port()
    rig.write()
    agent = await rig.start()
    assert agent.http is None
    rig.write(listen=port, token=False)
    await rig.reload()
    assert (await get(port))[0] == 200
    rig.write()
    await rig.reload()
    assert agent.http is None
    assert await refused(port)


async def test_bad_config_keeps_every_service(
    rig: Rig, collectors: tuple[Collector, ...], caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    rig.write(listen=port, push=collectors[0].url, load="{interfaces: [lo]}")
    agent = await rig.start()
    services = (agent.http, agent.pusher, agent.sampler)
    write_secret(rig.token_file, TOKEN_B.encode())
    rig.config_path.write_text(rig.config_path.read_text() + "bogus: 1\n")
    agent.request_reload()
    await until(lambda: logged(caplog, "config_reload_failed"))
    assert agent.state.reloads == 0
    assert (agent.http, agent.pusher, agent.sampler) == services
    assert (await get(port, token=TOKEN_A))[0] == 200


# -- push ------------------------------------------------------------------------


async def test_push_url_change_goes_to_the_new_collector(
    rig: Rig, collectors: tuple[Collector, Collector]
) -> None:
    a, b = collectors
    port = free_port()
    rig.write(listen=port, push=a.url)
    agent = await rig.start()
    old = agent.pusher
    assert old is not None
    await until(lambda: old.successes >= 1)
    rig.write(listen=port, push=b.url)
    await rig.reload()
    counted, sent_to_a = old.successes, len(a.pushes)
    new = agent.pusher
    assert new is not None and new is not old
    # The old pusher has ended and closed its session; nothing more goes to the old URL.
    assert old._session is None
    await until(lambda: new.successes > counted and len(b.pushes) >= 1)
    assert len(a.pushes) == sent_to_a
    _, metrics = await get(port, "/metrics", token=TOKEN_A)
    total = re.search(rb"^nodeagent_push_successes_total (\S+)$", metrics, re.MULTILINE)
    assert total is not None and float(total[1]) >= counted + 1 >= 2
    # Timestamps keep growing across the swap: the collector refuses repeats.
    assert b.pushes[0][1] > a.pushes[-1][1]


async def test_rotated_push_secret_signs_new_pushes(
    rig: Rig, collectors: tuple[Collector, Collector]
) -> None:
    a, _ = collectors
    rig.write(push=a.url)
    await rig.start()
    await until(lambda: len(a.pushes) >= 1)
    _, ts, signature, body = a.pushes[0]
    assert signature == sign(SECRET_A, ts, body)
    write_secret(rig.secret_file, SECRET_B)
    await rig.reload()
    n = len(a.pushes)
    await until(lambda: len(a.pushes) > n)
    _, ts, signature, body = a.pushes[-1]
    assert signature == sign(SECRET_B, ts, body)


async def test_node_rename_is_published(rig: Rig, collectors: tuple[Collector, Collector]) -> None:
    a, _ = collectors
    port = free_port()
    rig.write(listen=port, token=False, push=a.url)
    await rig.start()
    _, body = await get(port)
    assert json.loads(body)["node"] == "test-01"
    rig.write(node="test-02", listen=port, token=False, push=a.url)
    await rig.reload()
    _, body = await get(port)
    assert json.loads(body)["node"] == "test-02"
    n = len(a.pushes)
    await until(lambda: len(a.pushes) > n)
    node, _, _, pushed = a.pushes[-1]
    assert node == "test-02" and json.loads(pushed)["node"] == "test-02"


# -- load ------------------------------------------------------------------------


async def test_load_change_replaces_the_sampler(rig: Rig) -> None:
    port = free_port()
    fast = "{interfaces: [lo], capacity: 1Gbit, sample_interval: 100ms, window: 200ms}"
    rig.write(listen=port, token=False, load=fast)
    agent = await rig.start()

    def percent() -> object:
        return json.loads(agent.board.body)["load"]["percent"]

    await until(lambda: percent() is not None)
    old = agent.sampler
    assert old is not None
    # As if two samples had failed: the error counter must survive the swap.
    agent.metrics.load_sample_errors.inc(2)
    rig.write(listen=port, token=False, load=fast.replace("100ms", "150ms"))
    await rig.reload()
    assert agent.sampler is not None and agent.sampler is not old
    assert agent.sampler.config.sample_interval == 0.15
    # The new sampler makes figures of its own.
    await until(
        lambda: agent.sampler is not None and agent.sampler.meter.report.percent is not None
    )
    _, metrics = await get(port, "/metrics")
    assert "nodeagent_load_sample_errors_total 2.0" in metrics.decode()
    # Without a load section there is no figure, rather than the last one forever.
    rig.write(listen=port, token=False)
    await rig.reload()
    assert agent.sampler is None and percent() is None
    assert "load_no_data" in json.loads((await get(port))[1])["problems"]


# -- logging ---------------------------------------------------------------------


async def test_log_change_is_handed_to_the_cli(rig: Rig) -> None:
    rig.write()
    await rig.start()
    await rig.reload()
    assert rig.logging == [], "an unchanged log section is not applied again"
    rig.write(log="{level: debug, format: json}")
    await rig.reload()
    assert rig.logging == [LogConfig(level="debug", format="json")]
