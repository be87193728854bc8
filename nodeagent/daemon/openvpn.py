"""The ``openvpn`` service: every ``openvpn.instances[]`` entry, the feed's users, expiry on time.

One :class:`~nodeagent.openvpn.instance.Instance` task per configured
instance, all sharing one :class:`~nodeagent.openvpn.auth.Authenticator`
(so a burst of logins on every instance together still uses two worker
threads). The agent hands each new feed state's users to :meth:`offer`; the
service's own timer wakes at the next ``expires_at``, so an account that
expires loses its sessions within a second also while the feed is
unreachable. Whoever expires or leaves the feed is ended on every instance.

A reload hands :meth:`update` the new instances: an instance whose settings
changed is replaced, one that went is stopped, the others go on untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any

from nodeagent.config.model import OpenVPNInstanceConfig
from nodeagent.core.model import User
from nodeagent.daemon.service import TaskService
from nodeagent.openvpn.auth import Authenticator
from nodeagent.openvpn.instance import Hooks, Instance
from nodeagent.openvpn.sessions import Roster

__all__ = ["MAX_TIMER_SLEEP", "OpenVPNService"]

log = logging.getLogger(__name__)

# The timer never sleeps longer than this: a wall clock that jumps is noticed soon.
MAX_TIMER_SLEEP = 30.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


class OpenVPNService(TaskService):
    """Runs the instances; ``hooks`` count what they report (its callbacks are shared)."""

    def __init__(
        self,
        instances: tuple[OpenVPNInstanceConfig, ...],
        *,
        hooks: Hooks | None = None,
        clock: Callable[[], datetime] = _utcnow,
        authenticator: Callable[[Callable[[], datetime]], Authenticator] | None = None,
    ) -> None:
        """``authenticator`` makes the one login checker from the service's clock."""
        super().__init__("openvpn")
        self._configs = instances
        self._clock = clock
        self._make_authenticator = authenticator or (lambda c: Authenticator(clock=c))
        self._auth: Authenticator | None = None
        self.roster = Roster()
        base = hooks or Hooks()
        self._hooks = Hooks(
            auth=base.auth,
            ended=base.ended,
            changed=base.changed,
            protocol_error=base.protocol_error,
            on_connect=lambda: self.roster.invalid_listed(self._clock()),
            is_valid=self.roster.is_valid,
        )
        self.instances: dict[OpenVPNInstanceConfig, Instance] = {}
        self._tasks: dict[OpenVPNInstanceConfig, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    # -- what the agent hands in ------------------------------------------------------

    def offer(self, users: Mapping[str, User]) -> None:
        """The users of a new feed state: ends whoever lost their right, re-arms the timer."""
        ending = self.roster.offer(users, self._clock())
        if self._auth is not None:
            self._auth.set_users(users)
        self._end(ending, "feed")
        self._wake.set()

    def update(self, instances: tuple[OpenVPNInstanceConfig, ...]) -> None:
        """Take a reloaded ``openvpn.instances``; the service adjusts its tasks at once."""
        self._configs = instances
        self._wake.set()

    # -- what the status endpoints read ---------------------------------------------

    @property
    def unreachable(self) -> list[str]:
        """The tun names of instances whose last connection attempt failed."""
        return sorted(i.label for i in self.instances.values() if i.failing and not i.up)

    @property
    def up(self) -> dict[str, bool]:
        return {i.label: i.up for i in self.instances.values()}

    # -- the work ---------------------------------------------------------------------

    def work(self) -> Coroutine[Any, Any, None]:
        return self._run()

    async def _run(self) -> None:
        self._auth = self._make_authenticator(self._clock)
        self._auth.set_users(self.roster.users)
        try:
            while True:
                self._wake.clear()
                self._adjust()
                self._expire()
                await self._sleep()
        finally:
            for task in self._tasks.values():
                task.cancel()
            tasks = list(self._tasks.values())
            self._tasks.clear()
            self.instances.clear()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._auth.close()
            self._auth = None

    def _adjust(self) -> None:
        wanted = set(self._configs)
        for cfg in [c for c in self._tasks if c not in wanted]:
            self._tasks.pop(cfg).cancel()
            self.instances.pop(cfg, None)
            log.info("openvpn_instance_stopped interface=%s", cfg.interface)
        assert self._auth is not None
        for cfg in self._configs:
            task = self._tasks.get(cfg)
            if task is not None and not task.done():
                continue
            if task is not None and task.done() and not task.cancelled():
                # Instance.run only ends by a bug: the service fails, the supervisor restarts it.
                task.result()
            inst = Instance(cfg, self._auth, self._hooks, clock=self._clock)
            self.instances[cfg] = inst
            self._tasks[cfg] = t = asyncio.create_task(inst.run(), name=f"openvpn-{cfg.interface}")
            t.add_done_callback(lambda _: self._wake.set())
        self._hooks.changed()

    def _expire(self) -> None:
        self._end(self.roster.check(self._clock()), "expired")

    def _end(self, names: set[str], why: str) -> None:
        if not names:
            return
        log.info("openvpn_users_ending reason=%s users=%d", why, len(names))
        for inst in self.instances.values():
            inst.end(names)

    async def _sleep(self) -> None:
        now = self._clock()
        nxt = self.roster.next_expiry(now)
        delay = MAX_TIMER_SLEEP
        if nxt is not None:
            # A hair past the expiry: the check compares with ">".
            delay = min(delay, max((nxt - now).total_seconds(), 0.0) + 0.01)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self._wake.wait()
