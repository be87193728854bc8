"""Checking a username and password against the feed's users: scrypt, off the loop, bounded.

:func:`verify` is the pure check (scrypt with the hash's own parameters,
which the feed validator bounds, then ``hmac.compare_digest``). An unknown or
expired user costs one scrypt too, against a dummy hash with the same
parameters, so the answer's timing does not tell whether a username exists.

:class:`Authenticator` runs checks in a small thread pool (hashlib's scrypt
releases the GIL) behind a queue bound: a burst of logins waits its turn
without stalling the event loop, and logins past the bound are refused at
once rather than queued past OpenVPN's hand-window. :class:`Failures` slows
down a username after repeated failures, in memory only: there is no address
to key on, and none is kept.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime

from nodeagent.core.model import User

__all__ = [
    "DUMMY_HASH",
    "Authenticator",
    "Decision",
    "Failures",
    "ScryptHash",
    "parse_hash",
    "usable",
    "verify",
]

# The example's cost (16 MiB, ~50 ms): what an unknown username costs when the
# feed has no user to borrow parameters from.
DUMMY_HASH = "scrypt$16384$8$1$AAAAAAAAAAAAAAAAAAAAAA==$" + "A" * 43 + "="
MAX_PASSWORD = 1024
# The feed validator's bound (feed.snapshot.SCRYPT_MAX_*), again here: a hash past
# it is never computed, whoever handed it in.
MAX_MEMORY, MAX_P = 64 << 20, 4


@dataclass(frozen=True, slots=True)
class ScryptHash:
    n: int
    r: int
    p: int
    salt: bytes
    digest: bytes

    def __repr__(self) -> str:
        return f"ScryptHash(n={self.n}, r={self.r}, p={self.p})"


def parse_hash(text: str) -> ScryptHash:
    """``scrypt$N$r$p$<salt>$<hash>`` (already validated by the feed); ValueError otherwise."""
    parts = text.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise ValueError("not a scrypt hash")
    n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
    if n < 2 or n & (n - 1) or r < 1 or not 1 <= p <= MAX_P or 128 * n * r > MAX_MEMORY:
        raise ValueError("scrypt parameters out of bounds")
    return ScryptHash(n, r, p, base64.b64decode(parts[4]), base64.b64decode(parts[5]))


def _scrypt(password: bytes, h: ScryptHash) -> bytes:
    # maxmem a little above what the parameters need (128·N·r); the feed bounds them.
    return hashlib.scrypt(
        password,
        salt=h.salt,
        n=h.n,
        r=h.r,
        p=h.p,
        maxmem=128 * h.n * h.r + (1 << 20),
        dklen=max(1, len(h.digest)),
    )


def usable(user: User | None, now: datetime) -> bool:
    """Whether ``user`` may log in at ``now`` (exists and has not expired)."""
    return user is not None and (user.expires_at is None or user.expires_at > now)


def verify(user: User | None, password: bytes | None, now: datetime, dummy: ScryptHash) -> bool:
    """Whether ``password`` is ``user``'s; always one scrypt, whatever the outcome."""
    good = usable(user, now) and password is not None and len(password) <= MAX_PASSWORD
    try:
        h = parse_hash(user.password_hash) if good and user is not None else dummy
    except ValueError:
        good, h = False, dummy
    digest = _scrypt((password or b"")[:MAX_PASSWORD], h)
    return hmac.compare_digest(digest, h.digest) and good


@dataclass(slots=True)
class _Record:
    count: int
    last: float


class Failures:
    """Consecutive failed logins per username, forgotten after ``forget_after`` s; bounded.

    The first ``free`` failures cost nothing; then each login of that username
    waits ``base * 2**k`` seconds (at most ``cap``) before it is checked.
    """

    def __init__(
        self,
        *,
        free: int = 3,
        base: float = 1.0,
        cap: float = 20.0,
        forget_after: float = 900.0,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.free, self.base, self.cap = free, base, cap
        self.forget_after, self.max_entries = forget_after, max_entries
        self._clock = clock
        self._records: OrderedDict[str, _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def delay(self, username: str) -> float:
        rec = self._records.get(username)
        if rec is None:
            return 0.0
        if self._clock() - rec.last > self.forget_after:
            del self._records[username]
            return 0.0
        over = rec.count - self.free
        return 0.0 if over < 0 else min(self.cap, self.base * 2.0 ** min(over, 30))

    def failed(self, username: str) -> None:
        rec = self._records.pop(username, None) or _Record(0, 0.0)
        rec.count += 1
        rec.last = self._clock()
        self._records[username] = rec
        while len(self._records) > self.max_entries:
            self._records.popitem(last=False)

    def succeeded(self, username: str) -> None:
        self._records.pop(username, None)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one login: accepted, or refused (``overloaded``: not even checked)."""

    accepted: bool
    overloaded: bool = False


def _now() -> datetime:
    return datetime.now(UTC)


class Authenticator:
    """Decides logins against the users it holds, in a bounded pool of worker threads."""

    def __init__(
        self,
        *,
        workers: int = 2,
        max_pending: int = 512,
        failures: Failures | None = None,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openvpn-auth")
        self._slots = asyncio.Semaphore(workers)
        self.max_pending = max_pending
        self.pending = 0
        self.failures = failures or Failures()
        self._clock = clock
        self._users: Mapping[str, User] = {}
        self._dummy = parse_hash(DUMMY_HASH)

    @property
    def users(self) -> Mapping[str, User]:
        return self._users

    def set_users(self, users: Mapping[str, User]) -> None:
        """Hold ``users`` from now on; an unknown username borrows a user's scrypt cost."""
        self._users = users
        for user in users.values():
            try:
                h = parse_hash(user.password_hash)
            except ValueError:
                continue
            self._dummy = ScryptHash(h.n, h.r, h.p, b"\0" * len(h.salt), b"\0" * len(h.digest))
            break

    async def decide(self, username: str | None, password: bytes | None) -> Decision:
        """Accepted or refused; waits for a worker, and first for the username's slow-down."""
        if self.pending >= self.max_pending:
            return Decision(False, overloaded=True)
        self.pending += 1
        try:
            name = username or ""
            delay = self.failures.delay(name)
            if delay > 0:
                await asyncio.sleep(delay)
            async with self._slots:
                user = self._users.get(name)
                loop = asyncio.get_running_loop()
                ok = await loop.run_in_executor(
                    self._pool, verify, user, password, self._clock(), self._dummy
                )
        finally:
            self.pending -= 1
        if ok:
            self.failures.succeeded(name)
        else:
            self.failures.failed(name)
        return Decision(ok)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
