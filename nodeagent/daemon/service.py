"""The services of the daemon and the supervisor that keeps them running.

Every part of the agent (the HTTP server, the feed follower, the reconciler,
the scrubber, the load sampler, the pusher, the watchdog) is a
:class:`Service`: it starts, takes new settings, and stops. The
:class:`Supervisor` starts them, and when one ends by itself (a bug, or a
failure nothing inside it caught) restarts it with backoff while the others go
on: the service shows as degraded until its restart succeeds, and the daemon
never stops because one part failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from nodeagent.core.backoff import Backoff, Retries
from nodeagent.core.ticks import next_tick

log = logging.getLogger(__name__)

STOP_TIMEOUT = 10.0
# A service that ran this long since its last start counts as healthy again:
# its next failure waits the shortest delay.
STABLE_AFTER = 60.0
RESTART_BACKOFF = Backoff(base=1.0, cap=60.0)

#: Called by a service whose work ended by itself, with what ended it.
Failed = Callable[[BaseException], None]


class ServiceEnded(Exception):
    """A service's work returned although only a stop may end it."""


class Service(Protocol):
    """One part of the daemon.

    ``start`` raises if the service cannot begin (an address in use); once
    started, it calls ``failed`` if its work ends by itself. ``update``, on
    each service, takes that service's part of a reloaded configuration.
    ``stop`` ends the work and releases what it holds; it never raises.
    """

    @property
    def name(self) -> str: ...

    async def start(self, failed: Failed) -> None: ...

    async def stop(self) -> None: ...


class TaskService:
    """A service whose work is one coroutine, run as a named task."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._failed: Failed | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def work(self) -> Coroutine[Any, Any, None]:
        raise NotImplementedError

    async def start(self, failed: Failed) -> None:
        self._failed = failed
        task = asyncio.create_task(self.work(), name=self._name)
        task.add_done_callback(self._ended)
        self._task = task

    async def restart(self) -> None:
        """Start the work afresh with the settings it holds now (after ``update``)."""
        failed = self._failed
        await self.stop()
        if failed is not None:
            await self.start(failed)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=STOP_TIMEOUT)

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or task is not self._task or self._failed is None:
            return
        self._failed(task.exception() or ServiceEnded(self._name))


class Supervisor:
    """Starts services, restarts a failed one with backoff, stops them all."""

    def __init__(
        self,
        *,
        backoff: Backoff = RESTART_BACKOFF,
        on_change: Callable[[], None] = lambda: None,
        on_restart: Callable[[str], None] = lambda _: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self._backoff = backoff
        self._on_change = on_change
        self._on_restart = on_restart
        self._clock = clock
        self._services: dict[str, Service] = {}
        self._retries: dict[str, Retries] = {}
        self._started_at: dict[str, float] = {}
        self._restarting: dict[str, asyncio.Task[None]] = {}
        self.restarts: Counter[str] = Counter()
        self._stopping = False

    @property
    def degraded(self) -> frozenset[str]:
        """The services waiting for a restart or being restarted."""
        return frozenset(self._restarting)

    def _now(self) -> float:
        return (self._clock or asyncio.get_running_loop().time)()

    async def start(self, service: Service) -> None:
        """Start ``service`` now; raises what its start raises (the caller decides)."""
        self._services[service.name] = service
        self._retries.setdefault(service.name, Retries(self._backoff))
        await service.start(lambda e: self._failed(service, e))
        self._started_at[service.name] = self._now()

    def _failed(self, service: Service, e: BaseException) -> None:
        name = service.name
        if self._stopping or name in self._restarting:
            return
        retries = self._retries[name]
        if self._now() - self._started_at.get(name, 0.0) >= STABLE_AFTER:
            retries.succeeded()
        delay = retries.failed()
        # The type only: an exception's text may quote data the service handled.
        log.error(
            "service_failed service=%s error=%s restart_s=%.1f", name, type(e).__name__, delay
        )
        self._restarting[name] = asyncio.create_task(
            self._restart(service, delay), name=f"restart-{name}"
        )
        self._on_change()

    async def _restart(self, service: Service, delay: float) -> None:
        name = service.name
        retries = self._retries[name]
        while True:
            await asyncio.sleep(delay)
            await service.stop()
            self.restarts[name] += 1
            self._on_restart(name)
            try:
                await service.start(lambda e: self._failed(service, e))
            except Exception as e:
                delay = retries.failed()
                log.error(
                    "service_restart_failed service=%s error=%s restart_s=%.1f",
                    name,
                    type(e).__name__,
                    delay,
                )
                continue
            break
        self._started_at[name] = self._now()
        del self._restarting[name]
        log.info("service_restarted service=%s", name)
        self._on_change()

    async def stop_all(self) -> None:
        """Stop every service at once (a pending restart is called off)."""
        self._stopping = True
        pending = list(self._restarting.values())
        for task in pending:
            task.cancel()
        for task in pending:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._restarting.clear()
        services, self._services = list(self._services.values()), {}
        await asyncio.gather(*(s.stop() for s in reversed(services)), return_exceptions=True)


async def until_next_tick(interval: float) -> None:
    """Sleep until the next multiple of ``interval`` on the event loop's clock (``core.ticks``)."""
    now = asyncio.get_running_loop().time()
    await asyncio.sleep(next_tick(now, interval) - now)
