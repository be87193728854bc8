"""The WireGuard side of the daemon: the backends, the reconciler and the scrubber services.

:class:`Interfaces` holds a backend per configured interface and the turns the
worker threads take at them. The reconciler applies the newest feed whenever it
changes, every ``wireguard.resync_interval`` (a drift repair: the interfaces
are read back, unless their configuration digest shows that nothing changed
since a read-back found nothing to repair), at the next expiry, and after a
failure with backoff. The
scrubber re-adds idle peers every ``privacy.scrub_interval``. Neither touches a
peer on the way out: stopping the agent leaves every peer where it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping
from datetime import datetime
from typing import Any

from nodeagent.config.agent import Config, PrivacyConfig
from nodeagent.core.backend import Backend
from nodeagent.core.backoff import Backoff, Retries
from nodeagent.core.model import DesiredState, Peer
from nodeagent.core.sync import SyncOutcome
from nodeagent.daemon.memory import release_free_memory
from nodeagent.daemon.reconcile import (
    BackendFactory,
    SyncFailed,
    limit_reason,
    reconcile_all,
    setup_for,
)
from nodeagent.daemon.service import TaskService, until_next_tick
from nodeagent.daemon.turns import BackendTurns, TurnsStopped, close_quietly
from nodeagent.privacy.scrub import scrub_once
from nodeagent.publish.metrics import AgentMetrics

log = logging.getLogger(__name__)

RETRY_BACKOFF = Backoff(base=1.0, cap=60.0)
# A recreated interface is noticed within this; each check wakes the daemon, and
# wake-ups are most of what an idle daemon costs (checking every 0.5 s took a
# tenth of its idle CPU at 100 peers).
PRESENCE_CHECK_SECONDS = 1.0
# On the way out a pass in a worker thread may finish for BACKEND_GRACE seconds
# from the stop; then its backend calls are cut, and the thread has
# BACKEND_CUT_WAIT more to end. Well inside systemd's 20 s (TimeoutStopSec).
BACKEND_GRACE, BACKEND_CUT_WAIT, STOP_POLL_SECONDS = 5.0, 2.0, 0.05


class Interfaces:
    """A backend per configured interface, and the turns worker threads take at them."""

    def __init__(self, factory: BackendFactory) -> None:
        self._factory = factory
        self.backends: dict[str, Backend] = {}
        self.turns = BackendTurns()
        self.set_up: set[str] = set()  # interfaces whose ``create`` setup ran

    def open(self, config: Config) -> None:
        for cfg in config.wireguard.interfaces:
            if cfg.name not in self.backends:
                self.backends[cfg.name] = self._factory(cfg)

    def retire(self, names: Iterable[str]) -> None:
        """Drop the backends of ``names``: closed now, or as the pass using them ends."""
        for name in names:
            backend = self.backends.pop(name, None)
            if backend is not None:
                self.turns.retire(backend)
            self.set_up.discard(name)

    def _close_all(self) -> None:
        for backend in [*self.backends.values(), *self.turns.take_retired()]:
            close_quietly(backend)

    async def close(self, grace_until: float) -> None:
        """Close every backend once no pass uses them; past ``grace_until``, under that pass.

        A pass already in a worker thread cannot be cancelled: it may finish its
        messages until ``grace_until`` (the kernel applies each batch whole).
        Then its backends are closed under it: close() wakes a call blocked on
        its socket, so the thread ends, and asyncio.run's executor shutdown,
        which waits for it, does not keep the process past systemd's stop timeout.
        """
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        while self.turns.busy:
            now = loop.time()
            if give_up is None and now >= grace_until:
                log.warning("agent_stopping backend_call_cut grace_s=%.0f", BACKEND_GRACE)
                self._close_all()
                give_up = now + BACKEND_CUT_WAIT
            elif give_up is not None and now >= give_up:
                # Only a call stuck inside a system call that nothing can wake gets here.
                log.error("agent_stopping backend_call_stuck")
                break
            await asyncio.sleep(STOP_POLL_SECONDS)
        self._close_all()
        self.backends.clear()


class Reconciler(TaskService):
    """Keeps every interface's peers in step with the newest feed."""

    def __init__(
        self,
        config: Config,
        interfaces: Interfaces,
        metrics: AgentMetrics,
        *,
        clock: Callable[[], datetime],
        on_pass: Callable[[], None],
    ) -> None:
        super().__init__("reconciler")
        self.config = config
        self._interfaces = interfaces
        self._metrics = metrics
        self._clock = clock
        self._on_pass = on_pass
        self.desired: DesiredState | None = None
        self._wake = asyncio.Event()
        self._pending: tuple[Config, frozenset[str]] | None = None
        self._changed: set[str] = set()  # interfaces recreated or gone since the last pass
        # Each interface's presence() as the last pass began: the watch compares with it.
        self._presence: dict[str, Hashable | None] = {}
        # Peers each interface held after the last pass. Feed changes are planned
        # against it; after any failure it is dropped and the interfaces are read
        # back. Every resync_interval (a drift repair) it is trusted only where the
        # interface's configuration digest still equals the one recorded here: the
        # digest of a read-back that found no drift, kept while the agent sends
        # nothing (core.sync.plan_basis, digest_after). Any apply, failure, reload
        # or presence change drops it, so the next repair reads back.
        self._known: dict[str, Mapping[bytes, Peer]] = {}
        self._digests: dict[str, int] = {}
        # Per interface, as of its last pass: (removals held back, additions over the limit).
        self.held: dict[str, tuple[int, int]] = {}
        self.peers: dict[str, int] = {}  # peers on each interface after its last pass
        self._read_back_due = 0.0
        self.passes = 0
        self.errors = 0
        self.first_pass_ok = False
        self.last_pass_failed = False

    def offer(self, desired: DesiredState) -> None:
        """A new feed state: applied by the next pass, which starts now."""
        self.desired = desired
        self._wake.set()

    def update(self, config: Config, replace: frozenset[str]) -> None:
        """Take a new configuration before the next pass (which starts now), reading back.

        ``replace``: interfaces whose backends are retired for new ones.
        """
        self._pending = (config, replace)
        self._wake.set()

    def work(self) -> Coroutine[Any, Any, None]:
        return self._run()

    async def _run(self) -> None:
        """The passes and the presence watch; the first to fail ends both."""
        tasks = [asyncio.ensure_future(self._loop()), asyncio.ensure_future(self._watch())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            await until_next_tick(PRESENCE_CHECK_SECONDS)
            for name, backend in list(self._interfaces.backends.items()):
                if name not in self._presence:
                    continue  # not passed over yet
                now = backend.presence()
                before, self._presence[name] = self._presence[name], now
                if now != before:
                    log.info("interface_changed interface=%s present=%s", name, now is not None)
                    self._changed.add(name)
                    self._wake.set()

    async def _loop(self) -> None:
        retries = Retries(RETRY_BACKOFF)
        retry: float | None = None
        while True:
            # Cleared before the pass, so a wake-up that arrives during it is not lost.
            self._wake.clear()
            self._take_pending()
            if self.desired is not None:
                retry = await self._pass(self.desired, retries)
                self._on_pass()
            # Not asyncio.wait_for: on 3.11 it drops a cancellation that meets the wake-up.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_wakeup(retry)):
                    await self._wake.wait()

    def _take_pending(self) -> None:
        """On the loop, between passes: what changed since the last one."""
        for name in self._changed:
            # Read back, and set up again (key, port, addresses) if the agent creates it.
            self._forget(name)
            self._interfaces.set_up.discard(name)
        self._changed.clear()
        if self._pending is not None:
            (self.config, replace), self._pending = self._pending, None
            self._interfaces.retire(replace)
            for name in replace:
                self._presence.pop(name, None)
            self._forget()

    async def _pass(self, desired: DesiredState, retries: Retries) -> float | None:
        """One pass in a worker thread; if it failed (logged and counted), the retry delay."""
        try:
            self._interfaces.open(self.config)
            for name, backend in self._interfaces.backends.items():
                self._presence[name] = backend.presence()
            await asyncio.to_thread(self._reconcile_once, desired)
        except TurnsStopped:
            return None  # the agent is stopping: no failure, and no retry
        except Exception as e:
            retry = retries.failed()
            self.errors += 1
            self._metrics.reconcile_errors.inc()
            self.last_pass_failed = True
            if isinstance(e, SyncFailed):
                for name, reason in e.failures.items():
                    log.error(
                        "peer_sync failed interface=%s reason=%s retry_s=%.0f", name, reason, retry
                    )
            else:  # a failure outside any interface's pass
                log.error("peer_sync failed error=%s retry_s=%.0f", type(e).__name__, retry)
            return retry
        retries.succeeded()
        self.last_pass_failed = False
        return None

    def _next_wakeup(self, retry: float | None) -> float:
        """Seconds until the next pass: drift repair, the next expiry, or a retry."""
        delay = self.config.wireguard.resync_interval
        if retry is not None:
            delay = min(delay, retry)
        if self.desired is not None:
            now = self._clock()
            for iface in self.desired.wireguard.values():
                nxt = iface.next_expiry(now)
                if nxt is not None:
                    delay = min(delay, max((nxt - now).total_seconds(), 0.0) + 0.01)
        return delay

    def _reconcile_once(self, desired: DesiredState) -> None:
        try:
            with self._interfaces.turns:
                self._reconcile_locked(desired)
        finally:
            # After its turn: the pass's garbage (a read-back, a plan, the
            # previous snapshot) goes back to the system, not just to malloc.
            release_free_memory()

    def _reconcile_locked(self, desired: DesiredState) -> None:
        backends = self._interfaces.backends
        for cfg in self.config.wireguard.interfaces:
            if cfg.name not in self._interfaces.set_up:
                setup = setup_for(cfg)
                if setup is not None:
                    backends[cfg.name].setup(setup)
                    log.info("interface_setup interface=%s", cfg.name)
                self._interfaces.set_up.add(cfg.name)
        repair_due = time.monotonic() >= self._read_back_due
        if repair_due:
            self._read_back_due = time.monotonic() + self.config.wireguard.resync_interval
        try:
            outcomes = reconcile_all(
                self.config,
                backends,
                desired,
                self._clock(),
                self._known,
                digests=self._digests,
                repair_due=repair_due,
            )
        except SyncFailed as e:
            # The interfaces that succeeded are reported; every one is read back next time.
            self._forget()
            self._record(e.outcomes)
            raise
        except Exception:
            self._forget()
            raise
        self._known = {o.interface: o.peers for o in outcomes}
        self._digests = {o.interface: o.digest for o in outcomes if o.digest is not None}
        self.passes += 1
        self._metrics.reconcile_passes.inc()
        self.first_pass_ok = True
        self._record(outcomes)

    def _forget(self, name: str | None = None) -> None:
        """Drop what the last pass left (of ``name``, or of every interface): read back next."""
        if name is None:
            self._known.clear()
            self._digests.clear()
        else:
            self._known.pop(name, None)
            self._digests.pop(name, None)

    def _record(self, outcomes: list[SyncOutcome]) -> None:
        for o in outcomes:
            self._metrics.record(o)
            self.peers[o.interface] = o.peer_count
            if o.added or o.updated or o.removed:
                log.info("peer_sync applied %s", o.event())
            else:
                log.debug("peer_sync unchanged %s basis=%s", o.event(), o.basis.value)
            before = self.held.get(o.interface, (0, 0))
            held = (o.held_removals, o.held_additions)
            self.held[o.interface] = held
            if held != before:  # reported when it starts, changes and ends: not every pass
                self._report_held(o, before)

    def _report_held(self, o: SyncOutcome, before: tuple[int, int]) -> None:
        if o.held_removals or before[0]:
            log.warning(
                "peer_sync removals_held interface=%s held=%d of=%d max_removal_ratio=%g",
                o.interface,
                o.held_removals,
                o.peer_count,
                self.config.feed.max_removal_ratio,
            )
        if o.held_additions or before[1]:
            cfg = next((c for c in self.config.wireguard.interfaces if c.name == o.interface), None)
            backend = self._interfaces.backends.get(o.interface)
            limit = None if backend is None else backend.max_peers
            reason = "" if cfg is None else limit_reason(cfg, limit)
            log.warning(
                "peer_sync peer_limit interface=%s held_additions=%d reason=%s",
                o.interface,
                o.held_additions,
                reason,
            )


class Scrubber(TaskService):
    """Removes and re-adds idle peers, which wipes their endpoint and handshake time."""

    def __init__(self, settings: PrivacyConfig, interfaces: Interfaces) -> None:
        super().__init__("scrubber")
        self.settings = settings
        self._interfaces = interfaces

    def update(self, settings: PrivacyConfig) -> None:
        """Taken at the next pass: no restart, the interval runs on."""
        self.settings = settings

    def work(self) -> Coroutine[Any, Any, None]:
        return self._loop()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.scrub_interval)
            for name in list(self._interfaces.backends):
                try:
                    await asyncio.to_thread(self._scrub_one, name)
                except TurnsStopped:
                    return  # the agent is stopping
                except Exception as e:  # a failed pass is retried at the next interval
                    log.warning("scrub_failed interface=%s error=%s", name, type(e).__name__)

    def _scrub_one(self, name: str) -> None:
        # One conversation with a backend at a time: its socket is not shared across threads.
        with self._interfaces.turns:
            # Looked up in this turn: a reload since the pass began may have retired it.
            backend = self._interfaces.backends.get(name)
            if backend is not None:
                scrub_once(backend, self.settings.scrub_idle_after)
        release_free_memory()
