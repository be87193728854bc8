"""The browser tier: the real collector with 50 servers, seen by headless Debian Chromium.

Playwright drives Debian's ``/usr/bin/chromium`` (``executable_path``; no browser
download). A host without it FAILS every test here rather than skipping.

The collector runs in this process on an event loop in a thread; a pusher
thread sends every active server's signed status document once a second, so
what the page shows went through the whole push path. Removing a server from
:attr:`Fleet.active` makes it fall silent (and go offline after
``STALE_AFTER``). The history database is seeded with 24 hours of figures
first, so that the sparklines have something to draw.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from nodeagent.central.collector.config import CollectorConfig, NodeConfig
from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.service import Collector
from nodeagent.central.collector.store import HistoryStore
from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import signed_headers
from nodeagent.publish.status import encode, status_document

CHROMIUM = "/usr/bin/chromium"
STALE_AFTER = 6.0
PLACES = [
    ("nl", "Netherlands", "Amsterdam"), ("de", "Germany", "Frankfurt"),
    ("se", "Sweden", "Stockholm"), ("ch", "Switzerland", "Zurich"),
    ("us", "United States", "New York"), ("jp", "Japan", "Tokyo"),
    ("gb", "United Kingdom", "London"), ("fr", "France", "Paris"),
    ("ca", "Canada", "Toronto"), ("sg", "Singapore", "Singapore"),
]  # fmt: skip
COUNT = 50


def load_of(i: int) -> int:
    return (i * 37 + 11) % 101


def capacity_of(i: int) -> int:
    return 40_000_000 if i % 7 == 3 else 1_000_000_000


def node_config(i: int) -> NodeConfig:
    code, country, city = PLACES[i % len(PLACES)]
    name = f"{code}-{city[:3].lower()}-{i // len(PLACES) + 1:02d}"
    host = f"{name}.example.net"
    return NodeConfig(name, host, city, country, code, "x", city[:3].upper(), "", "")


class Fleet:
    """The collector on 127.0.0.1 and the agents pushing to it."""

    def __init__(self, tmp: Path) -> None:
        self.nodes = [node_config(i) for i in range(COUNT)]
        self.secrets = {n.name: f"secret-{n.name}".encode() for n in self.nodes}
        self.load = {n.name: load_of(i) for i, n in enumerate(self.nodes)}
        self.capacity = {n.name: capacity_of(i) for i, n in enumerate(self.nodes)}
        self.active = set(self.secrets)
        self._seed(tmp / "history.sqlite")
        config = CollectorConfig(
            path=str(tmp / "c.yaml"),
            listen=("127.0.0.1:0",),
            database=str(tmp / "history.sqlite"),
            stale_after=STALE_AFTER,
            source="push",
            prometheus=None,
            nodes=tuple(self.nodes),
        )
        self.loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._loop_thread.start()
        self.collector = Collector(config, self.secrets, tick_interval=0.25)
        asyncio.run_coroutine_threadsafe(self.collector.start(), self.loop).result(60)
        self.url = f"http://127.0.0.1:{self.collector.ports[0]}"
        self._stop = threading.Event()
        self._ts = int(time.time())
        self._pusher = threading.Thread(target=self._push_forever, daemon=True)
        self._pusher.start()

    def _seed(self, path: Path) -> None:
        store = HistoryStore.open(str(path))
        now = int(time.time())
        points = []
        for i, n in enumerate(self.nodes):
            for step in range(1, 288):
                at = now - 24 * 3600 + step * 300
                wave = 0.5 + 0.45 * math.sin(step / 288 * 2 * math.pi + i)
                points.append((n.name, Reading(at, round(100 * wave * load_of(i) / 100 + 5, 1),
                                               None, None, None)))  # fmt: skip
        store.write(points, [], now=now, fold=False)
        store.close()

    def _push_forever(self) -> None:
        session = requests.Session()
        while not self._stop.is_set():
            self._ts = max(self._ts + 1, int(time.time()))
            for name in sorted(self.active):
                pct, cap = self.load[name], self.capacity[name]
                report = LoadReport(pct, pct, 5, cap * pct // 100, cap * pct // 150, cap, 60)
                body = encode(status_document(name, "0.1.0", datetime.now(UTC), report))
                headers = signed_headers(name, self.secrets[name], self._ts, body)
                with contextlib.suppress(requests.RequestException):
                    session.post(f"{self.url}/api/v1/push", data=body, headers=headers, timeout=10)
            self._stop.wait(1.0)

    def wait_all_online(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.collector.fleet.snapshot.online < len(self.active):
            assert time.monotonic() < deadline, "the servers did not come online"
            time.sleep(0.1)

    def close(self) -> None:
        self._stop.set()
        self._pusher.join(15)
        asyncio.run_coroutine_threadsafe(self.collector.close(), self.loop).result(60)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._loop_thread.join(10)
        self.loop.close()


@pytest.fixture(scope="session")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = Fleet(tmp_path_factory.mktemp("collector"))
    f.wait_all_online()
    yield f
    f.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    if not (os.path.exists(CHROMIUM) and shutil.which("chromium")):
        pytest.fail("browser tier cannot run: apt-get install chromium", pytrace=False)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run", "--disable-component-update"],
        )  # fmt: skip
        yield b
        b.close()
