"""The feed follower service: the central service over HTTP, or a file.

Nothing a feed sends ends this service: whatever escapes a follower is a
rejected feed, counted and logged by type, and the follower starts again while
the last good state stays in force. Each valid state goes to ``on_state``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from typing import Any

from nodeagent.config.agent import FeedConfig
from nodeagent.core.model import DesiredState
from nodeagent.daemon.service import TaskService, until_next_tick
from nodeagent.feed.http import HttpFeed
from nodeagent.feed.snapshot import FeedError, FileStamp, read_file_feed, stamp
from nodeagent.publish.metrics import feed_age

log = logging.getLogger(__name__)

FEED_POLL_SECONDS = 1.0
FEED_RETRY_SECONDS = 5.0


class FeedFollower(TaskService):
    """Follows ``feed:``; ``errors`` counts refused documents by kind, across every reload."""

    def __init__(
        self,
        settings: FeedConfig,
        *,
        current: Callable[[], DesiredState | None],
        on_state: Callable[[DesiredState], None],
        on_problem: Callable[[], None],
        on_error: Callable[[], None],
    ) -> None:
        super().__init__("feed")
        self.settings = settings
        self._current = current
        self._on_state = on_state
        self._on_problem = on_problem
        self._on_error = on_error
        self.errors: Counter[str] = Counter()
        self.version: str | None = None
        self.loaded_at: float | None = None
        # The newest document the feed offered was refused (the last good one is in force).
        self._rejected = False
        self._stamp: FileStamp | None = None
        self.http: HttpFeed | None = None

    @property
    def rejected(self) -> bool:
        return self._rejected or (self.http is not None and self.http.stats.rejected)

    def age(self) -> float | None:
        """Seconds since the feed last proved the held state current (a 304 counts)."""
        if self.http is not None:
            return self.http.stats.age(time.time())
        return feed_age(self.loaded_at)

    async def update(self, settings: FeedConfig) -> None:
        """Follow ``settings`` (a new follower if they changed); a file feed is read again now."""
        if settings != self.settings:
            self.settings = settings
            self.http = None
            if self.running:
                await self.restart()
        # SIGHUP means "look again", also when the file did not change.
        self._stamp = None
        if settings.path is not None:
            await self._load_file(settings.path)

    def work(self) -> Coroutine[Any, Any, None]:
        return self._follow()

    async def _follow(self) -> None:
        while True:
            try:
                if self.settings.url is not None:
                    await self._follow_http()
                else:
                    await self._follow_file()
            except Exception as e:
                self._refused("internal_error")
                log.error(
                    "feed_rejected reason=internal_error error=%s retry_s=%.0f",
                    type(e).__name__,
                    FEED_RETRY_SECONDS,
                )
                await asyncio.sleep(FEED_RETRY_SECONDS)

    def _refused(self, kind: str) -> None:
        self.errors[kind] += 1
        self._on_error()
        self._rejected = True
        self._on_problem()

    async def _follow_http(self) -> None:
        async with HttpFeed(
            self.settings,
            errors=self.errors,
            on_rejected=lambda _: self._on_problem(),
            on_error=lambda _: self._on_error(),
        ) as feed:
            self.http = feed
            while True:
                # next() never raises for feed or network faults: it backs off and retries,
                # and the interfaces keep their peers meanwhile (fail static).
                self._accept(await feed.next(self._current()), "http")

    async def _follow_file(self) -> None:
        """Re-read the file feed whenever it changes (inode, size or mtime)."""
        while True:
            path = self.settings.path
            if path is not None:
                # A stat takes microseconds; handing it to a worker thread cost two
                # more wake-ups a second than the poll's own.
                current = stamp(path)
                if current != self._stamp:
                    await self._load_file(path)
            await until_next_tick(FEED_POLL_SECONDS)

    async def _load_file(self, path: str) -> None:
        try:
            desired, st = await asyncio.to_thread(read_file_feed, path, self._current())
        except FeedError as e:
            self._stamp = await asyncio.to_thread(stamp, path)
            self._refused("invalid")
            # FeedError names a position in the document, never a value from it.
            log.error("feed_rejected source=file reason=%s", e)
            return
        except OSError as e:
            self._stamp = None
            self._refused("unreadable")
            log.error("feed_unreadable source=file errno=%s", e.errno)
            return
        except Exception as e:
            # A validator bug: its text is not ours. The same file is not retried
            # until it changes, like any rejected document.
            self._stamp = await asyncio.to_thread(stamp, path)
            self._refused("invalid")
            log.error("feed_rejected source=file reason=internal_error error=%s", type(e).__name__)
            return
        self._stamp = st
        self._accept(desired, "file")

    def _accept(self, desired: DesiredState, source: str) -> None:
        self._rejected = False
        self.version = desired.version
        self.loaded_at = time.time()
        log.info(
            "feed_loaded source=%s interfaces=%d peers=%d users=%d",
            source,
            len(desired.wireguard),
            desired.peer_count(),
            len(desired.users),
        )
        self._on_state(desired)
