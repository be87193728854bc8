"""sd_notify: datagrams to $NOTIFY_SOCKET, and the agent's READY/WATCHDOG/STOPPING."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.config.agent import load_config
from nodeagent.daemon.agent import Agent
from nodeagent.daemon.sdnotify import Notifier
from tests.fakes import FakeBackend


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        s.setblocking(False)
        yield s, path


def drain(s: socket.socket) -> list[str]:
    got: list[str] = []
    while True:
        try:
            got.append(s.recv(4096).decode())
        except BlockingIOError:
            return got


def test_disabled_without_socket() -> None:
    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    n.ready()  # a no-op, not an error


def test_watchdog_interval_is_half_of_systemds() -> None:
    env = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": str(os.getpid())}
    assert Notifier(env).watchdog_interval == 2.0
    assert Notifier({**env, "WATCHDOG_PID": "1"}).watchdog_interval is None


async def test_agent_speaks_ready_watchdog_stopping(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"node: {{name: a}}\nfeed: {{path: {tmp_path}/feed.json}}\n")
    notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"})
    agent = Agent(load_config(cfg), backend_factory=lambda c: FakeBackend(), notifier=notifier)
    task = asyncio.create_task(agent.run())
    await asyncio.sleep(0.3)
    agent.request_stop()
    await task
    messages = drain(sock)
    assert messages[0].startswith("READY=1")
    assert messages.count("WATCHDOG=1") >= 3
    assert messages[-1] == "STOPPING=1"
