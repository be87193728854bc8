"""The HTTP endpoints in their own process: served while the agent is busy, fresh, and lost well.

Each test forks a real serving process (:meth:`HttpProcess.fork`) before it
starts an event loop, as ``nodeagent run`` does, and talks to it over HTTP.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, Counter

from nodeagent.config.agent import HTTPConfig, LogConfig
from nodeagent.daemon import httpprocess, httprelay, statusslot
from nodeagent.daemon.httpprocess import HttpProcess, ProcessLost, ProcessServer
from nodeagent.daemon.outputs import HttpService
from nodeagent.publish.http import HttpServer, HttpSettings, Sources
from nodeagent.publish.status import StatusBoard
from tests.daemon import degraded_config, free_port, running_daemon

TOKEN = b"process-token"


class Agent:
    """What the agent's side holds: a status board, a counter, the probes' reasons."""

    def __init__(self) -> None:
        self.board = StatusBoard("nl-ams-01", "0.1.0")
        self.registry = CollectorRegistry()
        self.counter = Counter("nodeagent_test_events", "events", registry=self.registry)
        self.ready: str | None = "first_sync_pending"
        self.sources = Sources(
            status=lambda: self.board.body,
            registry=self.registry,
            health=lambda: None,
            ready=lambda: self.ready,
        )


def settings(port: int = 0, token: bytes | None = None) -> HttpSettings:
    config = HTTPConfig(listen=(f"127.0.0.1:{port}",), token_file=None, tls=None)
    return HttpSettings(config, token, None)


def with_process(test: Callable[[HttpProcess, Agent], Awaitable[None]]) -> None:
    """Fork, then run ``test`` in a new event loop; the process is closed and reaped after."""
    configured: list[LogConfig] = []
    process = HttpProcess.fork(lambda loop, context: None, configured.append)
    agent = Agent()
    agent.board.watch(process.publish_status)

    async def body() -> None:
        try:
            await test(process, agent)
        finally:
            await process.close()

    asyncio.run(body())
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)  # closed, exited and reaped


def get(port: int, path: str, token: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        request.add_header("Authorization", "Bearer " + token.decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def aget(port: int, path: str, token: bytes | None = None) -> tuple[int, bytes]:
    return await asyncio.to_thread(get, port, path, token)


def test_status_is_served_while_the_agents_loop_is_blocked() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports
        got: list[tuple[int, bytes]] = []
        client = threading.Thread(target=lambda: got.append(get(port, "/status")))
        # The agent's loop is held (as a long pass holds the GIL): the request is
        # answered all the same, by the other process.
        client.start()
        client.join(timeout=30)
        assert got, "no answer while the agent was busy"
        status, body = got[0]
        assert status == 200 and body == agent.board.body
        assert json.loads(body)["node"] == "nl-ams-01"

    with_process(test)


def test_a_new_status_body_is_served_from_then_on() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports
        before = agent.board.body
        agent.board.rename("de-fra-02")
        assert agent.board.body != before
        for _ in range(200):
            _, body = await aget(port, "/status")
            if body == agent.board.body:
                break
            await asyncio.sleep(0.05)
        assert json.loads(body)["node"] == "de-fra-02"

    with_process(test)


def test_a_body_too_large_for_the_shared_slot_is_sent_and_served_all_the_same() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports

        async def served(body: bytes) -> bytes:
            process.publish_status(body)
            got = b""
            for _ in range(200):
                _, got = await aget(port, "/status")
                if got == body:
                    break
                await asyncio.sleep(0.05)
            return got

        large = b'{"node":"' + b"x" * (statusslot.CAPACITY + 1) + b'"}'
        assert await served(large) == large
        assert await served(b'{"node":"small"}') == b'{"node":"small"}'
        assert await served(large) == large

    with_process(test)


def test_metrics_and_probes_are_the_agents_answers_now() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports
        assert await aget(port, "/readyz") == (503, b"first_sync_pending\n")
        agent.ready = None
        assert await aget(port, "/readyz") == (200, b"ok\n")
        assert await aget(port, "/healthz") == (200, b"ok\n")
        agent.counter.inc(3)
        status, text = await aget(port, "/metrics")
        assert status == 200 and b"nodeagent_test_events_total 3.0" in text
        agent.counter.inc()
        assert b"nodeagent_test_events_total 4.0" in (await aget(port, "/metrics"))[1]

    with_process(test)


def test_a_source_that_fails_fails_that_request_only() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        def broken() -> str | None:
            raise RuntimeError("a bug")

        sources = Sources(agent.sources.status, agent.registry, broken, broken)
        server = process.server(sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports
        assert await aget(port, "/healthz") == (503, b"internal_error\n")
        assert await aget(port, "/status") == (200, agent.board.body)
        assert not process.lost

    with_process(test)


def test_health_says_unresponsive_when_the_agent_does_not_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httprelay, "ASK_TIMEOUT", 0.5)  # before the fork: the child's too

    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        (port,) = server.ports
        got: list[tuple[int, bytes]] = []
        client = threading.Thread(target=lambda: got.extend([get(port, "/healthz")]))
        client.start()
        client.join(timeout=30)  # the agent's loop is held throughout
        assert got == [(503, b"unresponsive\n")]
        assert await aget(port, "/healthz") == (200, b"ok\n")  # and it answers again

    with_process(test)


def test_token_bind_errors_update_and_close_as_in_one_process() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = ProcessServer(process, settings(taken.getsockname()[1]))
        with pytest.raises(OSError) as refused:
            await busy.start()
        assert refused.value.errno == errno.EADDRINUSE
        taken.close()

        server = process.server(agent.sources, settings(token=TOKEN), lambda e: None)
        await server.start()
        (port,) = server.ports
        assert (await aget(port, "/status"))[0] == 401
        assert (await aget(port, "/status", TOKEN))[0] == 200
        rotated = HttpSettings(server.settings.config, b"rotated", None)
        assert server.takes(rotated)
        await server.update(rotated)
        assert (await aget(port, "/status", TOKEN))[0] == 401
        assert (await aget(port, "/status", b"rotated"))[0] == 200
        assert (await aget(port, "/healthz"))[0] == 200  # never needs the token
        await server.close()
        with pytest.raises(urllib.error.URLError):
            await aget(port, "/healthz")
        await server.start()  # a closed server starts again
        (again,) = server.ports
        assert (await aget(again, "/status", b"rotated"))[0] == 200

    with_process(test)


def test_a_lost_process_fails_the_service_which_then_serves_here() -> None:
    async def test(process: HttpProcess, agent: Agent) -> None:
        failures: list[BaseException] = []
        service = HttpService(agent.sources, settings(), process)
        await service.start(failures.append)
        assert isinstance(service.server, ProcessServer)
        os.kill(process.pid, signal.SIGKILL)
        for _ in range(200):
            if failures:
                break
            await asyncio.sleep(0.05)
        assert [type(f) for f in failures] == [ProcessLost]
        assert process.lost
        await service.stop()
        await service.start(failures.append)  # the supervisor's restart
        assert isinstance(service.server, HttpServer)
        (port,) = service.server.ports
        assert await aget(port, "/status") == (200, agent.board.body)
        await service.stop()

    with_process(test)


def test_the_process_ignores_the_agents_signals_and_ends_with_it() -> None:
    process = HttpProcess.fork(lambda loop, context: None, lambda config: None)
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            os.kill(process.pid, sig)
        time.sleep(0.2)
        assert os.waitpid(process.pid, os.WNOHANG) == (0, 0)  # still there
    finally:
        asyncio.run(process.close())
    with pytest.raises(ChildProcessError):
        os.waitpid(process.pid, os.WNOHANG)


def test_a_process_that_does_not_exit_is_killed_at_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(httpprocess, "CLOSE_TIMEOUT", 0.2)

    async def test(process: HttpProcess, agent: Agent) -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        os.kill(process.pid, signal.SIGSTOP)  # it will not see its socket close

    with_process(test)  # which asserts the process is gone and reaped


def served_config(tmp_path: Path) -> tuple[Path, int]:
    port = free_port()
    cfg, _ = degraded_config(tmp_path, "wgp", f'http: {{listen: ["127.0.0.1:{port}"]}}\n')
    return cfg, port


def children(pid: int) -> list[int]:
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def status_from(port: int) -> int | None:
    try:
        return get(port, "/status")[0]
    except OSError:
        return None


def wait_until(condition: Callable[[], bool]) -> None:
    """Until ``condition()`` holds, for at most 30 s (then the caller's assertions say why)."""
    for _ in range(300):
        if condition():
            return
        time.sleep(0.1)


def test_the_daemon_serves_from_its_child_and_from_itself_once_the_child_is_gone(
    tmp_path: Path,
) -> None:
    cfg, port = served_config(tmp_path)
    with running_daemon(cfg) as daemon:
        agent = daemon.process
        wait_until(lambda: status_from(port) == 200)
        (child,) = children(agent.pid)
        listening = {c.laddr.port for c in psutil.Process(child).net_connections("tcp")}
        assert port in listening  # the child holds the listener
        os.kill(child, signal.SIGKILL)
        # The supervisor restarts the http service in the agent.
        wait_until(lambda: not children(agent.pid) and status_from(port) == 200)
        assert not children(agent.pid)
        assert status_from(port) == 200
        listening = {c.laddr.port for c in psutil.Process(agent.pid).net_connections("tcp")}
        assert port in listening
    assert agent.returncode == 0, daemon.stderr
    assert f"http_process_lost pid={child}" in daemon.stderr


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[7])


def test_the_child_maps_no_memory_for_each_request(tmp_path: Path) -> None:
    """Under the agent's fixed malloc thresholds, asyncio's 256 KB receive buffer
    would be mapped (a page fault at least) and unmapped at every request."""
    cfg, port = served_config(tmp_path)
    with running_daemon(cfg) as daemon:
        wait_until(lambda: status_from(port) == 200)
        (child,) = children(daemon.process.pid)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

        def requests(n: int) -> None:
            for _ in range(n):
                conn.request("GET", "/status")
                assert conn.getresponse().read()

        requests(50)  # what the first requests set up
        before = minor_faults(child)
        requests(500)
        conn.close()
        assert minor_faults(child) - before < 100
    assert daemon.process.returncode == 0, daemon.stderr


def test_without_an_http_section_the_daemon_does_not_fork(tmp_path: Path) -> None:
    cfg, _ = degraded_config(tmp_path, "wgp")
    with running_daemon(cfg) as daemon:
        agent = daemon.process
        for _ in range(300):
            if agent.stderr is not None and "agent started" in agent.stderr.readline():
                break
        assert children(agent.pid) == []
    assert agent.returncode == 0, daemon.stderr


def test_a_reloaded_log_section_reaches_the_process(tmp_path: Path) -> None:
    seen = tmp_path / "configured"

    def configure(config: LogConfig) -> None:  # runs in the child
        seen.write_text(f"{config.level} {config.format}")

    process = HttpProcess.fork(lambda loop, context: None, configure)
    agent = Agent()

    async def test() -> None:
        server = process.server(agent.sources, settings(), lambda e: None)
        await server.start()
        process.publish_log(LogConfig(level="debug", format="json"))
        for _ in range(200):
            if seen.exists():
                break
            await asyncio.sleep(0.05)
        await process.close()

    asyncio.run(test())
    assert seen.read_text() == "debug json"


def test_a_reload_moves_the_childs_listener_and_rotates_its_token(tmp_path: Path) -> None:
    cfg, old_port = served_config(tmp_path)
    with running_daemon(cfg) as daemon:
        agent = daemon.process
        wait_until(lambda: status_from(old_port) == 200)
        (child,) = children(agent.pid)
        new_port = free_port()
        token = tmp_path / "token"
        token.write_text("reloaded-token\n")
        token.chmod(0o600)
        cfg.write_text(
            cfg.read_text().replace(
                f'http: {{listen: ["127.0.0.1:{old_port}"]}}',
                f'http: {{listen: ["127.0.0.1:{new_port}"], token_file: {token}}}',
            )
        )
        agent.send_signal(signal.SIGHUP)
        wait_until(lambda: status_from(new_port) == 401)
        assert status_from(new_port) == 401  # the new listener, with the new token
        assert get(new_port, "/status", b"reloaded-token")[0] == 200
        assert status_from(old_port) is None  # the old one is closed
        assert children(agent.pid) == [child]  # served by the same child all along
    assert agent.returncode == 0, daemon.stderr
    assert "http_process_lost" not in daemon.stderr
