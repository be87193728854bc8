"""The collector as one object: the store, the fleet, the HTTP listeners and its tasks.

``async with Collector(config, secrets):`` opens the history (restoring the
newest figures, the last 24 h and the replay guard's timestamps), starts
listening, and runs two tasks: the ticker (every second: publish a new
snapshot if anything changed, write what is due to the store) and, with
``source: prometheus``, the poller. Exit stops the tasks, writes what is
left and closes the store. :meth:`Collector.reload` takes a new node list
and new secrets without dropping a connection.

The store runs on its own worker thread (``StoreThread``): the event loop
never waits for the disk. A failed write is counted and retried with the
next one; what waits is bounded (``MAX_PENDING``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Self

from aiohttp import web

from nodeagent.central.collector.app import Context, make_app
from nodeagent.central.collector.config import CollectorConfig
from nodeagent.central.collector.fleet import HISTORY_SPAN, Fleet
from nodeagent.central.collector.metrics import CollectorMetrics
from nodeagent.central.collector.promsource import PrometheusPoller
from nodeagent.central.collector.store import HistoryStore, Latest, StoreThread
from nodeagent.publish.http import split_host_port

log = logging.getLogger(__name__)

__all__ = ["MAX_PENDING", "Collector"]

MAX_PENDING = 200_000
# New figures reach the page and the APIs within this many seconds; a server
# going offline or coming back at the next tick.
PUBLISH_EVERY = 5.0
FOLD_EVERY = 60.0


class Collector:
    """The running collector; an async context manager."""

    def __init__(
        self,
        config: CollectorConfig,
        secrets: Mapping[str, bytes],
        *,
        clock: Callable[[], float] = time.time,
        tick_interval: float = 1.0,
        publish_every: float = PUBLISH_EVERY,
    ) -> None:
        self.config = config
        self.fleet = Fleet(config.nodes, config.stale_after, publish_every)
        self.metrics = CollectorMetrics(lambda: self.fleet.snapshot)
        self.ctx = Context(
            self.fleet,
            self.metrics,
            secrets=dict(secrets),
            push_enabled=config.source == "push",
            clock=clock,
            refresh=int(min(60.0, max(5.0, config.stale_after / 3))),
        )
        self._clock = clock
        self._tick_interval = tick_interval
        self._thread = StoreThread()
        self._store: HistoryStore | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._last_fold = float("-inf")

    @property
    def ports(self) -> list[int]:
        return [int(a[1]) for a in self._runner.addresses] if self._runner else []

    async def start(self) -> None:
        path = self.config.database
        self._store = store = await self._thread.call(lambda: HistoryStore.open(path))
        now = self._clock()
        latest = await self._thread.call(store.latest)
        recent = await self._thread.call(lambda: store.raw_since(now - HISTORY_SPAN))
        for node in sorted(set(latest) | set(recent)):
            kept = latest.get(node)
            self.fleet.restore(node, kept.reading if kept else None, recent.get(node, []))
            if kept is not None:
                self.ctx.last_push[node] = kept.push_ts
        self.fleet.tick(now)
        log.info("history restored servers=%d", len(latest))
        # access_log=None: an access log line is a visitor's address with a time.
        runner = web.AppRunner(make_app(self.ctx), access_log=None, handle_signals=False)
        await runner.setup()
        self._runner = runner
        try:
            for address in self.config.listen:
                host, port = split_host_port(address)
                await web.TCPSite(runner, host, port, backlog=1024).start()
                log.info("collector listening port=%d", port)
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._ticker(), name="ticker"))
        if self.config.prometheus is not None:
            poller = PrometheusPoller(
                self.config.prometheus, self.fleet, on_error=self.metrics.source_errors.inc
            )
            self._tasks.append(asyncio.create_task(poller.run(), name="prometheus"))

    async def tick(self) -> None:
        """Publish a snapshot if anything changed, and write what is due to the store."""
        now = self._clock()
        came, went = self.fleet.tick(now)
        for node in sorted(came):
            log.info("node online node=%s", node)
        for node in sorted(went):
            log.warning("node offline node=%s silent_s=%d", node, self.config.stale_after)
        await self.flush(now)

    async def flush(self, now: float) -> None:
        store = self._store
        if store is None or not (self.fleet.pending or self.fleet.changed):
            return
        points, self.fleet.pending = self.fleet.pending, []
        readings = self.fleet.latest()
        changed, self.fleet.changed = self.fleet.changed, set()
        latest = [
            (n, Latest(readings[n], self.ctx.last_push.get(n, 0))) for n in changed if n in readings
        ]
        fold = now - self._last_fold >= FOLD_EVERY
        try:
            await self._thread.call(lambda: store.write(points, latest, now, fold=fold))
        except Exception as e:  # sqlite3.Error, OSError: the disk, not the figures
            self.metrics.store_errors.inc()
            log.error("history write failed error=%s points=%d", type(e).__name__, len(points))
            # Retried with the next write; the newest figures first if it must shed.
            self.fleet.pending = (points + self.fleet.pending)[-MAX_PENDING:]
            self.fleet.changed |= changed
            return
        if fold:
            self._last_fold = now

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self._tick_interval)
            await self.tick()

    def reload(self, config: CollectorConfig, secrets: Mapping[str, bytes]) -> None:
        """Take a new node list, new secrets and a new stale_after; the rest needs a restart."""
        old = self.config
        for key in ("listen", "database", "source", "prometheus"):
            if getattr(old, key) != getattr(config, key):
                log.warning("config_reload needs_restart key=collector.%s", key)
        self.fleet.reconfigure(config.nodes, config.stale_after)
        self.ctx.secrets = dict(secrets)
        for gone in set(self.ctx.last_push) - self.fleet.names:
            del self.ctx.last_push[gone]
        self.config = config
        self.metrics.reloads.inc()
        log.info("config_reload done nodes=%d", len(config.nodes))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self._store is not None:
            await self.flush(self._clock())
            store, self._store = self._store, None
            await self._thread.call(store.close)
        self._thread.close()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
