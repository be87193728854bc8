"""The one retry policy: exponential backoff with equal jitter, capped.

Every part that retries (the feed client, the pusher, the reconciler, the
supervisor restarting a service) waits ``Backoff.delay(n)`` after its n-th
consecutive failure, so a fleet that failed together spreads out and no node
comes back sooner than half the nominal delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delay after the n-th consecutive failure: ``min(cap, base * 2**(n-1))``, jittered.

    "Equal jitter": half the delay is fixed and half random (``rnd`` in [0, 1]);
    ``rnd=1.0`` gives the nominal delay.
    """

    base: float = 1.0
    cap: float = 300.0

    def delay(self, failures: int, rnd: float = 1.0) -> float:
        nominal = min(self.cap, self.base * float(2 ** min(max(failures, 1) - 1, 30)))
        return nominal / 2 + nominal / 2 * rnd


class Retries:
    """Consecutive failures of one loop, and the delay each one asks for."""

    def __init__(self, backoff: Backoff, rnd: Callable[[], float] = random.random) -> None:
        self.backoff = backoff
        self.failures = 0
        self._rnd = rnd

    def failed(self) -> float:
        """Count a failure; the seconds to wait before the next try."""
        self.failures += 1
        return self.backoff.delay(self.failures, self._rnd())

    def succeeded(self) -> None:
        self.failures = 0
