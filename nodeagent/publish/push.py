"""Signed push of the status document to the status collector (docs/push.md).

``POST {url}`` with the document as body and three headers: the node's name,
the unix time in whole seconds, and ``sha256=<hex HMAC-SHA256 of
"<timestamp>\\n<body>">`` under the node's secret.

There is no queue: every attempt sends whatever the status board holds at
that moment, so a collector that was down for an hour receives one current
figure, not an hour of stale ones. Failures back off exponentially with
jitter, so that a fleet does not stampede a collector that comes back.

Clock, sleep, randomness and the HTTP session are injectable; the tests run
the real loop against a real collector with a fake clock.

A reload that changes where, as whom or with which secret to push replaces
the pusher; a :class:`PushState` shared by the old and the new one carries the
counts and the last timestamp over, and ``on_outcome`` tells a count kept
outside (a Prometheus counter) of every attempt.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp

from nodeagent.config.agent import PushConfig
from nodeagent.config.secretfile import read_secret
from nodeagent.core.backoff import Backoff

log = logging.getLogger(__name__)

__all__ = [
    "HEADER_NODE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "PushSettings",
    "PushState",
    "Pusher",
    "sign",
    "signed_headers",
]

HEADER_NODE = "X-Nodeagent-Node"
HEADER_TIMESTAMP = "X-Nodeagent-Timestamp"
HEADER_SIGNATURE = "X-Nodeagent-Signature"
REQUEST_TIMEOUT = 10.0
MAX_ANSWER = 64 << 10


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The signature header's value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret, f"{timestamp}\n".encode("ascii") + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def signed_headers(node: str, secret: bytes, timestamp: int, body: bytes) -> dict[str, str]:
    """Every header of one push."""
    return {
        "Content-Type": "application/json",
        HEADER_NODE: node,
        HEADER_TIMESTAMP: str(timestamp),
        HEADER_SIGNATURE: sign(secret, timestamp, body),
    }


@dataclass(frozen=True, slots=True)
class PushSettings:
    """Where, as whom and how often to push, with the secret as read from its file.

    A reload compares these rather than the ``push`` section alone: a secret
    rotated in place is a change too.
    """

    url: str
    node: str
    secret: bytes = field(repr=False)
    interval: float

    @classmethod
    def read(cls, config: PushConfig, node: str) -> PushSettings:
        """Reads the secret file now; raises ``OSError`` or ``ValueError`` as ``read_secret``."""
        return cls(config.url, node, read_secret(config.secret_file), config.interval)


@dataclass(slots=True)
class PushState:
    """What outlives one pusher when a reload replaces it.

    The counts are Prometheus counters, which must never go backwards, and the
    collector refuses a timestamp that is not newer than the last one it took.
    """

    successes: int = 0
    failures: int = 0
    last_timestamp: int = 0


class Pusher:
    """Pushes the newest status document every ``interval`` seconds; run :meth:`run` as a task."""

    def __init__(
        self,
        url: str,
        node: str,
        secret: bytes,
        interval: float,
        body: Callable[[], bytes],
        *,
        session: aiohttp.ClientSession | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        rnd: Callable[[], float] = random.random,
        backoff: Backoff | None = None,
        state: PushState | None = None,
        on_outcome: Callable[[bool], object] | None = None,
    ) -> None:
        self.url = url
        self.node = node
        self._secret = secret
        self.interval = interval
        self._body = body
        self._session = session
        self._own_session = session is None
        self._clock = clock
        self._sleep = sleep
        self._rnd = rnd
        # The cap never falls below the interval: backing off must not push more often.
        self.backoff = backoff or Backoff(cap=max(300.0, interval))
        self.state = PushState() if state is None else state
        self._on_outcome = on_outcome
        self.consecutive_failures = 0

    @classmethod
    def from_settings(
        cls,
        settings: PushSettings,
        body: Callable[[], bytes],
        *,
        state: PushState | None = None,
        on_outcome: Callable[[bool], object] | None = None,
    ) -> Pusher:
        """A pusher for ``settings``; pass the ``state`` of the one it replaces, if any."""
        s = settings
        return cls(s.url, s.node, s.secret, s.interval, body, state=state, on_outcome=on_outcome)

    @classmethod
    def from_config(cls, config: PushConfig, node: str, body: Callable[[], bytes]) -> Pusher:
        return cls.from_settings(PushSettings.read(config, node), body)

    @property
    def settings(self) -> PushSettings:
        """What this pusher was built from, to compare with a reloaded configuration."""
        return PushSettings(self.url, self.node, self._secret, self.interval)

    @property
    def successes(self) -> int:
        return self.state.successes

    @property
    def failures(self) -> int:
        return self.state.failures

    async def _timestamp(self) -> int:
        """Whole seconds, strictly after the previous push's: the collector refuses repeats."""
        ts = int(self._clock())
        while ts <= self.state.last_timestamp:
            await self._sleep(self.state.last_timestamp + 1 - self._clock())
            ts = int(self._clock())
        self.state.last_timestamp = ts
        return ts

    async def push_once(self) -> bool:
        """Send the current document once; True when the collector accepted it (2xx)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT)
            )
        body = self._body()
        ts = await self._timestamp()
        headers = signed_headers(self.node, self._secret, ts, body)
        reason: str
        try:
            async with self._session.post(self.url, data=body, headers=headers) as resp:
                # The answer's body says nothing the status does not; a collector that
                # sends an endless one is not read into memory.
                await resp.content.read(MAX_ANSWER)
                if 200 <= resp.status < 300:
                    self._succeeded()
                    return True
                reason = f"status={resp.status}"
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as e:
            # The type only: connection errors quote the collector's address.
            reason = f"error={type(e).__name__}"
        self._failed(reason)
        return False

    def _succeeded(self) -> None:
        if self.consecutive_failures:
            log.info("push recovered after_failures=%d", self.consecutive_failures)
        self.state.successes += 1
        self.consecutive_failures = 0
        if self._on_outcome is not None:
            self._on_outcome(True)

    def _failed(self, reason: str) -> None:
        self.state.failures += 1
        self.consecutive_failures += 1
        if self._on_outcome is not None:
            self._on_outcome(False)
        # Logged when failing starts and then at powers of two: a dead collector
        # must not fill the journal.
        n = self.consecutive_failures
        if n & (n - 1) == 0:
            log.warning("push failed %s consecutive=%d", reason, n)

    def next_delay(self) -> float:
        """Seconds until the next attempt, from the outcome of the last one."""
        if self.consecutive_failures == 0:
            return self.interval
        return self.backoff.delay(self.consecutive_failures, self._rnd())

    async def run(self) -> None:
        """Push forever; only cancellation ends it."""
        try:
            while True:
                await self.push_once()
                await self._sleep(self.next_delay())
        finally:
            await self.close()

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and self._own_session:
            await session.close()
