"""The HTTP feed client: full snapshots, deltas and long-poll (docs/feed.md).

``HttpFeed.next(current)`` waits until the central service has a state newer
than ``current`` and returns it, validated. It never raises for a fault of the
service or the network: a refused connection, a timeout, a 5xx, a truncated or
oversized body, invalid JSON or a document that fails validation is counted in
``stats.errors`` by kind, logged without any value from the document, and
retried with exponential backoff and jitter, while the caller keeps ``current``
in force (fail static). Only cancellation ends a pending ``next``.

One request at a time::

    GET url                          -> 200 full snapshot
    GET url?since=V&wait=S           -> 200 delta (or full), 304 nothing new in S, 410 V unknown

A delta is applied only when its ``since`` equals ``current.version``; any
other delta, and any 410, makes the next request a full one. After a rejected
document the client long-polls on the rejected version (``since=<rejected>``)
instead of downloading the full snapshot again and again: the first change
after it brings a delta that cannot apply, hence one full fetch.

The bearer token is re-read from ``feed.token_file`` for every request, so a
rotated token needs no restart. ``feed.max_bytes`` bounds the decoded body and
is enforced while reading, so a gzip bomb or an endless body is cut off early.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import random
import ssl
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

import aiohttp

from nodeagent.config.agent import FeedConfig
from nodeagent.config.secretfile import read_secret
from nodeagent.core.backoff import Backoff, Retries
from nodeagent.core.model import DesiredState
from nodeagent.feed.delta import Applied, DeltaMismatch, apply_document
from nodeagent.feed.snapshot import FeedError, parse_snapshot

__all__ = ["FeedFetchError", "FeedStats", "HttpFeed", "make_session"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
# How much longer than the long-poll wait a request may take before it is abandoned.
TIMEOUT_MARGIN = 15.0
# A full snapshot of a million peers is ~130 MB: give it time on a slow uplink.
FULL_TIMEOUT = 300.0
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0
# A server that ignores wait= answers 304 at once; this keeps it from being polled in a loop.
MIN_INTERVAL = 1.0
CHUNK = 256 << 10

SessionFactory = Callable[[], aiohttp.ClientSession]
Sleep = Callable[[float], Awaitable[None]]


class FeedFetchError(Exception):
    """One failed request. ``kind`` is a short code for metrics; no URL, no document text."""

    def __init__(self, kind: str, status: int | None = None) -> None:
        super().__init__(kind if status is None else f"{kind} status={status}")
        self.kind = kind
        self.status = status


class _Answer(enum.Enum):
    NOT_MODIFIED = 304
    GONE = 410


@dataclass
class FeedStats:
    """What the feed client reports about itself; never any document content.

    ``errors`` counts failures by kind (``connect``, ``tls``, ``timeout``,
    ``disconnected``, ``truncated``, ``too_large``, ``http_status``, ``auth``,
    ``invalid``, ``token``, ``transport``); ``answers`` counts good answers
    (``full``, ``delta``, ``not_modified``, ``gone``, ``gap``, ``unchanged``).
    ``last_success`` is the wall-clock time of the last answer that proved the
    held state current (a valid document, or a 304 to the version held): the
    feed's age is ``now - last_success``. ``rejected`` is true while the newest
    document the service offered was refused: a 304 on that version proves
    only that the service still wants it, not that the held state is current.
    """

    errors: Counter[str] = field(default_factory=Counter)
    answers: Counter[str] = field(default_factory=Counter)
    last_success: float | None = None
    consecutive_errors: int = 0
    rejected: bool = False

    def age(self, now: float) -> float | None:
        return None if self.last_success is None else max(now - self.last_success, 0.0)


def make_session(config: FeedConfig) -> aiohttp.ClientSession:
    """The default session: TLS verified against ``feed.ca_file`` if given, else the system CAs."""
    tls: ssl.SSLContext | bool = True
    if config.ca_file is not None:
        tls = ssl.create_default_context(cafile=config.ca_file)
    # One connection is all the client ever uses; a second one would only mean a leak.
    connector = aiohttp.TCPConnector(ssl=tls, limit=2)
    # trust_env=False: a proxy picked up from the environment would see the bearer token.
    return aiohttp.ClientSession(connector=connector, auto_decompress=True, trust_env=False)


class HttpFeed:
    """Follows ``feed.url``; see the module docstring. Use as an async context manager.

    ``session_factory``, ``sleep``, ``rand`` and ``clock`` are injectable for tests.
    """

    def __init__(
        self,
        config: FeedConfig,
        *,
        session_factory: SessionFactory | None = None,
        sleep: Sleep = asyncio.sleep,
        rand: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        timeout_margin: float = TIMEOUT_MARGIN,
        full_timeout: float = FULL_TIMEOUT,
        backoff_min: float = BACKOFF_MIN,
        backoff_max: float = BACKOFF_MAX,
        min_interval: float = MIN_INTERVAL,
        errors: Counter[str] | None = None,
        on_rejected: Callable[[bool], None] | None = None,
        on_error: Callable[[str], None] | None = None,
    ) -> None:
        """``errors`` is the error counter to add to: a caller that replaces the client
        (a reload) passes the same one, so its totals never go backwards.
        ``on_rejected`` is told whenever ``stats.rejected`` changes, ``on_error``
        of every failure, with its kind."""
        if config.url is None:
            raise ValueError("HttpFeed needs feed.url")
        self.config = config
        self.stats = FeedStats(errors=Counter() if errors is None else errors)
        self._url = config.url
        self._factory: SessionFactory = session_factory or (lambda: make_session(config))
        self._session: aiohttp.ClientSession | None = None
        self._sleep = sleep
        self._clock = clock
        self._margin = timeout_margin
        self._full_timeout = full_timeout
        # Equal jitter, doubling from backoff_min to backoff_max (core.backoff).
        self._retries = Retries(Backoff(backoff_min, backoff_max), rand)
        self._min_interval = min_interval
        self._on_rejected = on_rejected
        self._on_error = on_error
        self._want_full = False
        # Version of the last rejected document: long-poll on it rather than refetching.
        self._watch: str | None = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- the loop --------------------------------------------------------------------

    async def next(self, current: DesiredState | None) -> DesiredState:
        """The first validated state newer than ``current``, however long that takes."""
        while True:
            since = self._since(current)
            started = time.monotonic()
            try:
                answer = await self._request(since)
                if answer is _Answer.NOT_MODIFIED:
                    # Nothing newer than a rejected document proves nothing current.
                    self._succeeded("not_modified", current=since != self._watch)
                    log.debug("feed_poll not_modified")
                    await self._pace(started)
                    continue
                if answer is _Answer.GONE:
                    # 410 means "since is too old": only a full snapshot can follow.
                    self.stats.answers["gone"] += 1
                    self._want_full, self._watch = True, None
                    log.info("feed_poll gone refetch=full")
                    continue
                applied = await self._parse(answer, since, current)
            except FeedFetchError as e:
                await self._failed(e)
                continue
            if applied is None:
                continue
            state = applied.state
            # A server that lost its history may answer since= with a full snapshot.
            kind = "full" if applied.full else "delta"
            if current is not None and state.version == current.version:
                self._succeeded("unchanged")
                await self._pace(started)
                continue
            self._succeeded(kind)
            log.info(
                "feed_update kind=%s bytes=%d interfaces=%d peers=%d users=%d ms=%.0f",
                kind,
                len(answer),
                len(state.wireguard),
                state.peer_count(),
                len(state.users),
                (time.monotonic() - started) * 1000,
            )
            return state

    def _since(self, current: DesiredState | None) -> str | None:
        if self._want_full:
            return None
        if self._watch is not None:
            return self._watch
        return None if current is None else current.version

    async def _parse(
        self, body: bytes, since: str | None, current: DesiredState | None
    ) -> Applied | None:
        """The state in ``body``; None after a delta that does not fit (then a full fetch)."""
        try:
            if since is None:
                # Validation of a large snapshot takes a second of CPU: not on the event loop.
                applied = Applied(await asyncio.to_thread(parse_snapshot, body, current), True)
            else:
                applied = await asyncio.to_thread(apply_document, body, current)
        except DeltaMismatch:
            self.stats.answers["gap"] += 1
            self._want_full, self._watch = True, None
            log.info("feed_poll gap refetch=full")
            return None
        except FeedError as e:
            # The version was taken while decoding, in the worker thread: a large
            # rejected body is never decoded again on the event loop.
            self._watch = e.version or self._watch
            # After a rejected document there is nothing a retry of the same full fetch
            # could bring; long-poll on the rejected version instead (see module docstring).
            if self._watch is not None:
                self._want_full = False
            self._rejected(True)
            # FeedError names a position in the document, never a value from it.
            raise FeedFetchError("invalid") from e
        except Exception as e:
            # A validator bug must not stop the follower: the document is refused
            # like an invalid one, and the held state stays in force.
            self._rejected(True)
            raise FeedFetchError("invalid") from e
        self._want_full, self._watch = False, None
        return applied

    def _succeeded(self, kind: str, *, current: bool = True) -> None:
        """Count a good answer; ``current``: it proves the held state is the newest."""
        self.stats.answers[kind] += 1
        if current:
            self.stats.last_success = self._clock()
            self._rejected(False)
        self.stats.consecutive_errors = 0
        self._retries.succeeded()

    def _rejected(self, value: bool) -> None:
        if value != self.stats.rejected:
            self.stats.rejected = value
            if self._on_rejected is not None:
                self._on_rejected(value)

    async def _failed(self, e: FeedFetchError) -> None:
        self.stats.errors[e.kind] += 1
        if self._on_error is not None:
            self._on_error(e.kind)
        self.stats.consecutive_errors += 1
        delay = self._retries.failed()
        reason = ""
        if isinstance(e.__cause__, FeedError):
            reason = f" reason={e.__cause__}"
        elif e.kind == "invalid" and e.__cause__ is not None:
            # Not a FeedError: its text is not ours and may quote the document.
            reason = f" reason=internal_error error={type(e.__cause__).__name__}"
        log.warning(
            "feed_error kind=%s%s%s consecutive=%d retry_s=%.1f",
            e.kind,
            "" if e.status is None else f" status={e.status}",
            reason,
            self.stats.consecutive_errors,
            delay,
        )
        await self._sleep(delay)

    async def _pace(self, started: float) -> None:
        rest = self._min_interval - (time.monotonic() - started)
        if rest > 0:
            await self._sleep(rest)

    # -- one request -----------------------------------------------------------------

    def _token(self) -> str | None:
        if self.config.token_file is None:
            return None
        try:
            token = read_secret(self.config.token_file).decode("ascii")
        except (OSError, ValueError):
            # The reason (missing, mode, encoding) is for check-config; here a count suffices.
            raise FeedFetchError("token") from None
        if not token.isprintable() or any(c.isspace() for c in token):
            raise FeedFetchError("token")
        return token

    def _session_now(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            try:
                self._session = self._factory()
            except (OSError, ssl.SSLError, ValueError):
                raise FeedFetchError("tls") from None
        return self._session

    async def _request(self, since: str | None) -> bytes | _Answer:
        token = self._token()
        session = self._session_now()
        headers = {"Accept": "application/json", "Accept-Encoding": "gzip"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        if since is None:
            params: dict[str, str] = {}
            wait = 0.0
            total = self._full_timeout
        else:
            wait = self.config.long_poll
            params = {"since": since, "wait": f"{wait:g}"}
            total = wait + self._margin
        timeout = aiohttp.ClientTimeout(
            total=total, connect=CONNECT_TIMEOUT, sock_read=wait + self._margin
        )
        try:
            async with session.get(
                self._url, params=params, headers=headers, timeout=timeout, allow_redirects=False
            ) as resp:
                if resp.status == 304 and since is not None:
                    return _Answer.NOT_MODIFIED
                if resp.status == 410 and since is not None:
                    return _Answer.GONE
                if resp.status in (401, 403):
                    raise FeedFetchError("auth", resp.status)
                if resp.status != 200:
                    raise FeedFetchError("http_status", resp.status)
                return await self._read_limited(resp)
        except TimeoutError:
            raise FeedFetchError("timeout") from None
        except aiohttp.ClientConnectorCertificateError:
            raise FeedFetchError("tls") from None
        except aiohttp.ClientConnectorError:
            raise FeedFetchError("connect") from None
        except aiohttp.ServerDisconnectedError:
            raise FeedFetchError("disconnected") from None
        except aiohttp.ClientPayloadError:
            raise FeedFetchError("truncated") from None
        except aiohttp.ClientError:
            raise FeedFetchError("transport") from None

    async def _read_limited(self, resp: aiohttp.ClientResponse) -> bytes:
        """The decoded body, refused as soon as it passes ``max_bytes``."""
        limit = self.config.max_bytes
        # Content-Length is the encoded size: if even that is too big, do not start reading.
        if resp.content_length is not None and resp.content_length > limit:
            raise FeedFetchError("too_large")
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > limit:
                raise FeedFetchError("too_large")
            chunks.append(chunk)
        return b"".join(chunks)
