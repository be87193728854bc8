"""The services that publish: the HTTP server, the load sampler, the pusher, the watchdog.

Each takes its part of a reloaded configuration with ``update``, which returns
whether anything was replaced. Counts that must never go backwards (Prometheus
counters, the push's last timestamp) live outside the objects a reload replaces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nodeagent.config.agent import LoadConfig
from nodeagent.daemon.httpprocess import HttpProcess, ProcessServer
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.service import Failed, TaskService
from nodeagent.load.meter import LoadReport
from nodeagent.load.sampler import LoadSampler
from nodeagent.publish.http import HttpServer, HttpSettings, Sources
from nodeagent.publish.push import Pusher, PushSettings, PushState

log = logging.getLogger(__name__)


def _log_http_failed(e: OSError) -> None:
    # errno only: the exception's text quotes the address or the file.
    log.error("config_reload http_failed error=%s errno=%s", type(e).__name__, e.errno)


class HttpService:
    """Serves ``/status`` and friends (no server when the settings are None).

    With a serving ``process`` the server runs there; once that process is
    gone (the service fails, and its restart comes here), in this one.
    """

    name = "http"

    def __init__(
        self, sources: Sources, settings: HttpSettings | None, process: HttpProcess | None = None
    ) -> None:
        self._sources = sources
        self._settings = settings
        self._process = process
        self._failed: Failed = lambda _: None
        self.server: HttpServer | ProcessServer | None = None

    async def start(self, failed: Failed) -> None:
        """Bind every address now; ``OSError`` if one cannot be bound."""
        self._failed = failed
        await self._serve()

    async def _serve(self) -> None:
        if self._settings is None:
            return
        server: HttpServer | ProcessServer
        if self._process is not None and not self._process.lost:
            server = self._process.server(self._sources, self._settings, self._failed)
        else:
            server = HttpServer(self._sources, self._settings)
        await server.start()
        self.server = server

    async def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await server.close()

    async def update(self, settings: HttpSettings | None) -> bool:
        """Serve ``settings`` instead; if they cannot be served, keep serving the old ones.

        A new token or certificate is taken by the running server, which keeps
        its listeners and connections. New addresses, or TLS turned on or off,
        need a new server: the old one closes first, as the new one may want
        the same port.
        """
        old = self.server
        if settings == (old.settings if old is not None else None):
            return False
        if old is not None and settings is not None and old.takes(settings):
            try:
                await old.update(settings)
            except OSError as e:  # a certificate that does not load
                _log_http_failed(e)
                return False
            self._settings = settings
            return True
        await self.stop()
        previous, self._settings = self._settings, settings
        try:
            await self._serve()
            return True
        except OSError as e:  # an address in use or not local, a certificate that does not load
            _log_http_failed(e)
        self._settings = previous
        if old is not None:
            try:
                await old.start()
                self.server = old
            except OSError as e:
                log.error("config_reload http_restore_failed errno=%s", e.errno)
        return False


class SamplerService(TaskService):
    """Samples the load (no figures when the settings are None); a new meter on new settings."""

    def __init__(
        self,
        settings: LoadConfig | None,
        *,
        on_report: Callable[[LoadReport], None],
        on_error: Callable[[], None],
        on_cleared: Callable[[], object],
    ) -> None:
        super().__init__("load")
        self.settings = settings
        self._on_report = on_report
        self._on_error = on_error
        self._on_cleared = on_cleared
        self.sampler: LoadSampler | None = None

    def work(self) -> Coroutine[Any, Any, None]:
        assert self.settings is not None
        # A new meter: its window starts afresh.
        self.sampler = LoadSampler(
            self.settings, on_report=self._on_report, on_error=self._on_error
        )
        return self.sampler.run()

    async def start(self, failed: Failed) -> None:
        if self.settings is not None:
            await super().start(failed)
        else:
            self.sampler = None

    async def update(self, settings: LoadConfig | None) -> bool:
        if settings == self.settings:
            return False
        self.settings = settings
        await self.stop()
        if settings is None:
            self.sampler = None
            self._on_cleared()
        await self.restart()
        return True


class PushService(TaskService):
    """Pushes the status document (no push when the settings are None)."""

    def __init__(
        self,
        settings: PushSettings | None,
        body: Callable[[], bytes],
        state: PushState,
        on_outcome: Callable[[bool], object] | None = None,
    ) -> None:
        super().__init__("push")
        self.settings = settings
        self._body = body
        self._state = state
        self._on_outcome = on_outcome
        self.pusher: Pusher | None = None

    def work(self) -> Coroutine[Any, Any, None]:
        assert self.settings is not None
        self.pusher = Pusher.from_settings(
            self.settings, self._body, state=self._state, on_outcome=self._on_outcome
        )
        return self.pusher.run()

    async def start(self, failed: Failed) -> None:
        if self.settings is not None:
            await super().start(failed)
        else:
            self.pusher = None

    async def update(self, settings: PushSettings | None) -> bool:
        if settings == self.settings:
            return False
        self.settings = settings
        # Waits for the old pusher to close its HTTP session.
        await self.stop()
        self.pusher = None
        await self.restart()
        return True


class Watchdog(TaskService):
    """Tells systemd the event loop is alive, at half its watchdog interval."""

    def __init__(self, notifier: Notifier) -> None:
        super().__init__("watchdog")
        self._notifier = notifier

    def work(self) -> Coroutine[Any, Any, None]:
        return self._loop()

    async def _loop(self) -> None:
        interval = self._notifier.watchdog_interval
        assert interval
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(interval)
