"""The daemon: reconciler, feed follower, scrubber, load sampler, push and watchdog tasks.

Readable top to bottom: ``run()`` installs signal handlers, starts the HTTP
server and named tasks, waits for the stop event, then cancels and drains the
tasks with a timeout. SIGTERM/SIGINT stop, SIGHUP reloads the configuration (a
bad new one keeps the old one running) and re-reads the feed. A reload replaces
each service whose settings changed (the HTTP server, the load sampler, the
pusher) through the same ``_start_*`` method ``run()`` uses. The kernel is never
touched on the way out: stopping or restarting the agent leaves every peer where
it is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from nodeagent import __version__
from nodeagent.config.agent import (
    Config,
    ConfigError,
    LoadConfig,
    LogConfig,
    WireguardInterfaceConfig,
    load_config,
)
from nodeagent.config.secretfile import read_private_key
from nodeagent.core.model import DesiredState, InterfaceSetup, Peer
from nodeagent.core.sync import SyncOutcome, sync_interface
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.turns import BackendTurns, close_quietly
from nodeagent.feed.http import HttpFeed
from nodeagent.feed.snapshot import FeedError, FileStamp, read_file_feed, stamp
from nodeagent.load.meter import LoadReport
from nodeagent.load.sampler import LoadSampler, SamplerCounts
from nodeagent.privacy.scrub import scrub_once
from nodeagent.publish.http import HttpServer, HttpSettings, Sources
from nodeagent.publish.metrics import MetricsSnapshot, ReconcileStats, feed_age, make_registry
from nodeagent.publish.push import Pusher, PushSettings, PushState
from nodeagent.publish.status import StatusBoard
from nodeagent.wireguard import Backend, BackendError, open_backend

log = logging.getLogger(__name__)

FEED_POLL_SECONDS = 1.0
FEED_RETRY_SECONDS = 5.0
FEED_STALE_FACTOR, FEED_STALE_SLACK = 3, 15.0
SHUTDOWN_TIMEOUT = 10.0
# On the way out a pass in a worker thread may finish for BACKEND_GRACE seconds
# from the stop; then its backend calls are cut, and the thread has
# BACKEND_CUT_WAIT more to end. Well inside systemd's 20 s (TimeoutStopSec).
BACKEND_GRACE, BACKEND_CUT_WAIT, STOP_POLL_SECONDS = 5.0, 2.0, 0.05
SYNC_ONCE_TIMEOUT = 120.0
RETRY_MIN, RETRY_MAX = 1.0, 60.0

BackendFactory = Callable[[WireguardInterfaceConfig], Backend]


def utcnow() -> datetime:
    return datetime.now(UTC)


def setup_for(cfg: WireguardInterfaceConfig) -> InterfaceSetup | None:
    """What ``create: true`` asks of an interface, with its private key read from disk."""
    if not cfg.create or cfg.private_key_file is None or cfg.listen_port is None:
        return None
    return InterfaceSetup(read_private_key(cfg.private_key_file), cfg.listen_port, cfg.addresses)


def http_settings(config: Config) -> HttpSettings | None:
    """The ``http`` section with its token and certificate as they are now; None: no server."""
    return None if config.http is None else HttpSettings.read(config.http)


def push_settings(config: Config) -> PushSettings | None:
    """The ``push`` section, node name and secret as they are now; None: no push."""
    return None if config.push is None else PushSettings.read(config.push, config.node_name)


class SyncFailed(Exception):
    """Some interfaces failed a pass; ``failures`` maps each to what an operator can act on.

    ``outcomes`` are the interfaces that succeeded in the same pass.
    """

    def __init__(self, failures: Mapping[str, str], outcomes: list[SyncOutcome]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in failures.items()))
        self.failures = dict(failures)
        self.outcomes = outcomes


def failure_reason(interface: str, e: BaseException) -> str:
    """The backend's own reason for a failure, without the interface name it repeats.

    BackendError texts are written by the backends and name no key or address.
    Any other exception's text is not ours: an OSError is reduced to its errno
    name, anything else to its type (it is a bug, and its text may quote data).
    """
    if isinstance(e, BackendError):
        text = str(e)
        return text.removeprefix(f"{interface}: ") or type(e).__name__
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def limit_reason(cfg: WireguardInterfaceConfig, limit: int | None) -> str:
    """Who refuses more peers, in the words an operator searches for."""
    who = "the kernel module" if cfg.backend == "kernel" else "wireguard-go"
    return f"{who} takes at most {limit:,} peers" if limit else f"{who} takes no more peers"


def reconcile_all(
    config: Config,
    backends: Mapping[str, Backend],
    desired: DesiredState,
    now: datetime,
    known: Mapping[str, Mapping[bytes, Peer]] | None = None,
) -> list[SyncOutcome]:
    """One pass over every configured interface; ``SyncFailed`` after the rest ran if any failed.

    ``known`` maps interfaces to the peers they held after the previous pass;
    an interface without an entry is read back first.
    """
    outcomes: list[SyncOutcome] = []
    failures: dict[str, str] = {}
    for cfg in config.wireguard.interfaces:
        want = desired.wireguard.get(cfg.name)
        if want is None:
            # Absent from the feed is not "no peers": leave the interface as it is.
            log.warning("peer_sync skipped interface=%s reason=not_in_feed", cfg.name)
            continue
        try:
            outcomes.append(
                sync_interface(
                    backends[cfg.name],
                    want,
                    now,
                    config.feed.max_removal_ratio,
                    known=(known or {}).get(cfg.name),
                )
            )
        except Exception as e:  # one interface's failure never keeps the others from their pass
            failures[cfg.name] = failure_reason(cfg.name, e)
    if failures:
        raise SyncFailed(failures, outcomes)
    return outcomes


def _log_http_failed(e: OSError) -> None:
    # errno only: the exception's text quotes the address or the file.
    log.error("config_reload http_failed error=%s errno=%s", type(e).__name__, e.errno)


@dataclass
class AgentState:
    """What the agent knows about itself; read by status endpoints, never holds peer data."""

    feed_version: str | None = None
    feed_loaded_at: float | None = None
    # Feed documents refused or unreadable, by kind, across every feed client a
    # reload started: a counter that never goes backwards.
    feed_errors: Counter[str] = field(default_factory=Counter)
    # The newest document the feed offered was refused (the last good one is in force).
    feed_rejected: bool = False
    sync_errors: int = 0
    syncs: int = 0
    first_sync_ok: bool = False
    last_sync_failed: bool = False
    reloads: int = 0  # configurations a reload took over (a bad one is not counted)


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        backend_factory: BackendFactory = open_backend,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = utcnow,
        configure_logging: Callable[[LogConfig], None] | None = None,
    ) -> None:
        """``configure_logging`` applies a reloaded ``log`` section (the CLI owns logging)."""
        self.config = config
        self.state = AgentState()
        self._factory = backend_factory
        self._notifier = notifier or Notifier()
        self._clock = clock
        self._configure_logging = configure_logging
        self._backends: dict[str, Backend] = {}
        self._desired: DesiredState | None = None
        self._feed_stamp: FileStamp | None = None
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        self._reload = False
        self._setup_done: set[str] = set()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wg_lock = BackendTurns()
        # Peers each interface held after the last pass. Feed changes are planned
        # against it; every resync_interval (and after any failure) it is dropped
        # and the interfaces are read back, which repairs drift.
        self._known: dict[str, Mapping[bytes, Peer]] = {}
        # Per interface, as of its last pass: (removals held back, additions over the limit).
        self._held: dict[str, tuple[int, int]] = {}
        self._read_back_due = 0.0
        self.failed = False
        self.http_feed: HttpFeed | None = None
        # Load, status and metrics: aggregates only, rendered from cached snapshots.
        self.board = StatusBoard(config.node_name, __version__)
        self.reconcile_stats = ReconcileStats()
        self.registry = make_registry(self._metrics_snapshot)
        self.sources = Sources(
            status=lambda: self.board.body,
            registry=self.registry,
            health=self._health,
            ready=self._ready,
        )
        # Built by run() and replaced by a reload that changes their settings. The
        # counts they expose as Prometheus counters live here, shared by each
        # generation, so that a reload never turns a counter back.
        self.http: HttpServer | None = None
        self.sampler: LoadSampler | None = None
        self.sampler_counts = SamplerCounts()
        self.pusher: Pusher | None = None
        self.push_state = PushState()

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload = True
        self._wake.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            # Inside the try: a failed start (an address in use) still closes what opened.
            self._open_backends()
            await self._start_http(http_settings(self.config))
            self._start("reconciler", self._reconciler())
            self._start("feed", self._feed_follower())
            self._start_sampler(self.config.load)
            self._start_pusher(push_settings(self.config))
            self._start("scrubber", self._scrubber())
            if self._notifier.watchdog_interval:
                self._start("watchdog", self._watchdog())
            log.info("agent started interfaces=%d", len(self.config.wireguard.interfaces))
            self._notifier.ready()
            await self._stop.wait()
        finally:
            self._notifier.stopping()
            log.info("agent stopping")
            # No pass begins from here on (nothing touches the peers on the way out);
            # one already running has its grace from now, whatever else the stop waits for.
            self._wg_lock.stop()
            grace_until = loop.time() + BACKEND_GRACE
            tasks = list(self._tasks.values())
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT)
            if self.http is not None:
                await self.http.close()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self._stop_backends(grace_until)
            log.info("agent stopped")

    def _start(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        old = self._tasks.get(name)
        if old is not None:
            old.cancel()
        task = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._task_done)
        self._tasks[name] = task

    async def _stop_task(self, name: str) -> None:
        """Cancel a task and wait until it cleaned up (closed its session or socket)."""
        task = self._tasks.pop(name, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=SHUTDOWN_TIMEOUT)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        """A task that ends by itself is a bug: log it and stop, so systemd restarts us."""
        if task.cancelled():
            return
        exc = task.exception()
        log.error("task_failed task=%s error=%s", task.get_name(), type(exc).__name__)
        self.failed = True
        self._stop.set()

    def _open_backends(self) -> None:
        for cfg in self.config.wireguard.interfaces:
            if cfg.name not in self._backends:
                self._backends[cfg.name] = self._factory(cfg)

    def _close_backends(self) -> None:
        """Close every backend, those a reload retired included (safe under a call in flight)."""
        for backend in [*self._backends.values(), *self._wg_lock.take_retired()]:
            close_quietly(backend)
        self._backends.clear()

    async def _stop_backends(self, grace_until: float) -> None:
        """Close the backends once no pass uses them; past ``grace_until``, under that pass.

        A pass already in a worker thread cannot be cancelled: it may finish its
        messages until ``grace_until`` (the kernel applies each batch whole).
        Then its backends are closed under it: close() wakes a call blocked on
        its socket, so the thread ends, and asyncio.run's executor shutdown,
        which waits for it, does not keep the process past systemd's stop timeout.
        """
        loop = asyncio.get_running_loop()
        give_up: float | None = None
        while self._wg_lock.busy:
            now = loop.time()
            if give_up is None and now >= grace_until:
                log.warning("agent_stopping backend_call_cut grace_s=%.0f", BACKEND_GRACE)
                for backend in [*self._backends.values(), *self._wg_lock.take_retired()]:
                    close_quietly(backend)
                give_up = now + BACKEND_CUT_WAIT
            elif give_up is not None and now >= give_up:
                # Only a call stuck inside a system call that nothing can wake gets here.
                log.error("agent_stopping backend_call_stuck")
                break
            await asyncio.sleep(STOP_POLL_SECONDS)
        self._close_backends()

    # -- services: started by run(), replaced by a reload that changes their settings --

    async def _start_http(self, settings: HttpSettings | None) -> None:
        """Serve ``/status`` and friends (None: no server); ``OSError`` if it cannot."""
        server = None if settings is None else HttpServer(self.sources, settings)
        if server is not None:
            await server.start()
        self.http = server

    async def _replace_http(self, settings: HttpSettings | None) -> bool:
        """Serve ``settings`` instead; if they cannot be served, keep serving the old ones.

        A new token or certificate is taken by the running server, which keeps
        its listeners and connections. New addresses, or TLS turned on or off,
        need a new server: the old one closes first, as the new one may want
        the same port.
        """
        old = self.http
        if settings == (old.settings if old is not None else None):
            return False
        if old is not None and settings is not None and old.takes(settings):
            try:
                old.update(settings)
                return True
            except OSError as e:  # a certificate that does not load
                _log_http_failed(e)
                return False
        if old is not None:
            await old.close()
        try:
            await self._start_http(settings)
            return True
        except OSError as e:  # an address in use or not local, a certificate that does not load
            _log_http_failed(e)
        self.http = None
        if old is not None:
            try:
                await old.start()
                self.http = old
            except OSError as e:
                log.error("config_reload http_restore_failed errno=%s", e.errno)
        return False

    def _start_sampler(self, config: LoadConfig | None) -> None:
        """Sample the load as the ``load-sampler`` task (None: no load figures)."""
        self.sampler = None
        if config is not None:
            self.sampler = LoadSampler(
                config, on_report=self._on_load_report, counts=self.sampler_counts
            )
            self._start("load-sampler", self.sampler.run())

    async def _replace_sampler(self, config: LoadConfig | None) -> bool:
        if config == (self.sampler.config if self.sampler is not None else None):
            return False
        await self._stop_task("load-sampler")
        if config is None:
            self.board.clear_report()
        # A new meter: its window starts afresh, as the new settings ask.
        self._start_sampler(config)
        return True

    def _on_load_report(self, report: LoadReport) -> None:
        self.board.update(report, self._problems())

    def _start_pusher(self, settings: PushSettings | None) -> None:
        """Push the status document as the ``push`` task (None: no push)."""
        self.pusher = None
        if settings is not None:
            self.pusher = Pusher.from_settings(
                settings, lambda: self.board.body, state=self.push_state
            )
            self._start("push", self.pusher.run())

    async def _replace_pusher(self, settings: PushSettings | None) -> bool:
        if settings == (self.pusher.settings if self.pusher is not None else None):
            return False
        # Waits for the old pusher to close its HTTP session.
        await self._stop_task("push")
        self._start_pusher(settings)
        return True

    # -- tasks ---------------------------------------------------------------------

    async def _watchdog(self) -> None:
        assert self._notifier.watchdog_interval
        while True:
            self._notifier.watchdog()
            await asyncio.sleep(self._notifier.watchdog_interval)

    async def _scrubber(self) -> None:
        """Remove and re-add idle peers, which wipes their endpoint and handshake time."""
        while True:
            # Re-read every pass, so that a reload takes effect without a restart.
            await asyncio.sleep(self.config.privacy.scrub_interval)
            for name in list(self._backends):
                try:
                    await asyncio.to_thread(self._scrub_one, name)
                except Exception as e:  # a failed pass is retried at the next interval
                    log.warning("scrub_failed interface=%s error=%s", name, type(e).__name__)

    def _scrub_one(self, name: str) -> None:
        # One conversation with a backend at a time: its socket is not shared across threads.
        with self._wg_lock:
            # Looked up in this turn: a reload since the pass began may have retired it.
            backend = self._backends.get(name)
            if backend is not None:
                scrub_once(backend, self.config.privacy.scrub_idle_after)

    async def _feed_follower(self) -> None:
        """Follow the configured feed: the central service over HTTP, or a file.

        Nothing a feed sends ends this task: whatever escapes a follower is a
        rejected feed, counted and logged by type, and the follower starts again
        while the last good state stays in force.
        """
        while True:
            try:
                if self.config.feed.url is not None:
                    await self._follow_http()
                else:
                    await self._follow_file()
            except Exception as e:
                self._feed_refused("internal_error")
                log.error(
                    "feed_rejected reason=internal_error error=%s retry_s=%.0f",
                    type(e).__name__,
                    FEED_RETRY_SECONDS,
                )
                await asyncio.sleep(FEED_RETRY_SECONDS)

    def _feed_refused(self, kind: str) -> None:
        self.state.feed_errors[kind] += 1
        self.state.feed_rejected = True
        self._publish_problems()

    def _publish_problems(self) -> None:
        self.board.update(problems=self._problems())

    async def _follow_http(self) -> None:
        async with HttpFeed(
            self.config.feed,
            errors=self.state.feed_errors,
            on_rejected=lambda _: self._publish_problems(),
        ) as feed:
            self.http_feed = feed
            while True:
                # next() never raises for feed or network faults: it backs off and retries,
                # and the interfaces keep their peers meanwhile (fail static).
                self._accept(await feed.next(self._desired), "http")

    async def _follow_file(self) -> None:
        """Re-read the file feed whenever it changes (inode, size or mtime)."""
        while True:
            path = self.config.feed.path
            if path is not None:
                current = await asyncio.to_thread(stamp, path)
                if current != self._feed_stamp:
                    await self._load_feed(path)
            await asyncio.sleep(FEED_POLL_SECONDS)

    async def _load_feed(self, path: str) -> None:
        try:
            desired, st = await asyncio.to_thread(read_file_feed, path)
        except FeedError as e:
            self._feed_stamp = await asyncio.to_thread(stamp, path)
            self._feed_refused("invalid")
            # FeedError names a position in the document, never a value from it.
            log.error("feed_rejected source=file reason=%s", e)
            return
        except OSError as e:
            self._feed_stamp = None
            self._feed_refused("unreadable")
            log.error("feed_unreadable source=file errno=%s", e.errno)
            return
        except Exception as e:
            # A validator bug: its text is not ours. The same file is not retried
            # until it changes, like any rejected document.
            self._feed_stamp = await asyncio.to_thread(stamp, path)
            self._feed_refused("invalid")
            log.error("feed_rejected source=file reason=internal_error error=%s", type(e).__name__)
            return
        self._feed_stamp = st
        self._accept(desired, "file")

    def _accept(self, desired: DesiredState, source: str) -> None:
        self._desired = desired
        self.state.feed_rejected = False
        self.state.feed_version = desired.version
        self.state.feed_loaded_at = time.time()
        log.info(
            "feed_loaded source=%s interfaces=%d peers=%d users=%d",
            source,
            len(desired.wireguard),
            desired.peer_count(),
            len(desired.users),
        )
        self._wake.set()

    async def _reconciler(self) -> None:
        retry = RETRY_MIN
        failed = False
        while True:
            # Cleared before the pass, so a wake-up that arrives during it is not lost.
            self._wake.clear()
            if self._reload:
                self._reload = False
                await self._do_reload()
            if self._desired is not None:
                try:
                    await asyncio.to_thread(self._reconcile_once, self._desired)
                except SyncFailed as e:  # count, back off, read back
                    failed = True
                    self.state.sync_errors += 1
                    for name, reason in e.failures.items():
                        log.error(
                            "peer_sync failed interface=%s reason=%s retry_s=%.0f",
                            name,
                            reason,
                            retry,
                        )
                except Exception as e:  # a failure outside any interface's pass
                    failed = True
                    self.state.sync_errors += 1
                    log.error("peer_sync failed error=%s retry_s=%.0f", type(e).__name__, retry)
                else:
                    failed, retry = False, RETRY_MIN
                self.state.last_sync_failed = failed
                self.board.update(problems=self._problems())
            timeout = self._next_wakeup(retry if failed else None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            if failed:
                retry = min(retry * 2, RETRY_MAX)

    def _next_wakeup(self, retry: float | None) -> float:
        """Seconds until the next pass: drift repair, the next expiry, or a retry."""
        delay = self.config.wireguard.resync_interval
        if retry is not None:
            delay = min(delay, retry)
        if self._desired is not None:
            now = self._clock()
            for iface in self._desired.wireguard.values():
                nxt = iface.next_expiry(now)
                if nxt is not None:
                    delay = min(delay, max((nxt - now).total_seconds(), 0.0) + 0.01)
        return delay

    def _reconcile_once(self, desired: DesiredState) -> None:
        with self._wg_lock:
            self._reconcile_locked(desired)

    def _reconcile_locked(self, desired: DesiredState) -> None:
        for cfg in self.config.wireguard.interfaces:
            if cfg.name not in self._setup_done:
                setup = setup_for(cfg)
                if setup is not None:
                    self._backends[cfg.name].setup(setup)
                    log.info("interface_setup interface=%s", cfg.name)
                self._setup_done.add(cfg.name)
        if time.monotonic() >= self._read_back_due:
            self._known.clear()
            self._read_back_due = time.monotonic() + self.config.wireguard.resync_interval
        try:
            outcomes = reconcile_all(
                self.config, self._backends, desired, self._clock(), self._known
            )
        except SyncFailed as e:
            # The interfaces that succeeded are reported; every one is read back next time.
            self._known.clear()
            self._record(e.outcomes)
            raise
        except Exception:
            self._known.clear()
            raise
        self._known = {o.interface: o.peers for o in outcomes}
        self.state.syncs += 1
        self.state.first_sync_ok = True
        self._record(outcomes)

    def _record(self, outcomes: list[SyncOutcome]) -> None:
        limits = {c.name: c for c in self.config.wireguard.interfaces}
        for o in outcomes:
            self.reconcile_stats.record(o)
            if o.added or o.updated or o.removed:
                log.info("peer_sync applied %s", o.event())
            else:
                log.debug("peer_sync unchanged %s", o.event())
            before = self._held.get(o.interface, (0, 0))
            held = (o.held_removals, o.held_additions)
            self._held[o.interface] = held
            if held == before:
                continue  # reported when it starts, changes and ends: not every pass
            if o.held_removals or before[0]:
                log.warning(
                    "peer_sync removals_held interface=%s held=%d of=%d max_removal_ratio=%g",
                    o.interface,
                    o.held_removals,
                    o.peer_count,
                    self.config.feed.max_removal_ratio,
                )
            if o.held_additions or before[1]:
                cfg = limits.get(o.interface)
                backend = self._backends.get(o.interface)
                limit = None if backend is None else backend.max_peers
                reason = "" if cfg is None else limit_reason(cfg, limit)
                log.warning(
                    "peer_sync peer_limit interface=%s held_additions=%d reason=%s",
                    o.interface,
                    o.held_additions,
                    reason,
                )

    # -- what the status endpoints read (cached, never the kernel) ---------------------

    def _problems(self) -> list[str]:
        problems: list[str] = []
        if self.state.last_sync_failed:
            problems.append("reconcile_failing")
        if self._desired is None:
            problems.append("no_feed")
        if self._feed_rejected():
            problems.append("feed_rejected")
        if any(r for r, _ in self._held.values()):
            problems.append("removals_held")
        if any(a for _, a in self._held.values()):
            problems.append("peer_limit")
        return problems

    def _feed_rejected(self) -> bool:
        http = self.http_feed
        return self.state.feed_rejected or (http is not None and http.stats.rejected)

    def _ready(self) -> str | None:
        if self.state.last_sync_failed:
            return "reconcile_failing"
        if not self.state.first_sync_ok:
            return "first_reconcile_pending"
        if self._feed_rejected():
            # The service offers a state the agent refused: what it holds is not current.
            return "feed_rejected"
        age = self._feed_age()
        limit = FEED_STALE_FACTOR * self.config.feed.long_poll + FEED_STALE_SLACK
        if self.config.feed.url is not None and age is not None and age > limit:
            # Peers stay as they are (fail static); this only tells the poller.
            return f"feed_stale age_s={age:.0f}"
        return None

    def _feed_age(self) -> float | None:
        """Seconds since the feed last proved the held state current (a 304 counts)."""
        if self.http_feed is not None:
            return self.http_feed.stats.age(time.time())
        return feed_age(self.state.feed_loaded_at)

    def _health(self) -> str | None:
        s = self.sampler
        if s is None or s.last_sample_at is None:
            return None
        late = time.monotonic() - s.last_sample_at > 3 * s.config.sample_interval + 5
        return "load_sampler_stalled" if late else None

    def _metrics_snapshot(self) -> MetricsSnapshot:
        s = self.sampler
        return MetricsSnapshot(
            load=s.meter.report if s else None,
            links=s.links if s else {},
            load_sample_errors=self.sampler_counts.errors,
            reconcile=self.reconcile_stats.snapshot(),
            reconcile_passes=self.state.syncs,
            reconcile_errors=self.state.sync_errors,
            feed_age_seconds=self._feed_age(),
            feed_errors=sum(self.state.feed_errors.values()),
            push_successes=self.push_state.successes,
            push_failures=self.push_state.failures,
            ready=self._ready() is None,
        )

    async def _do_reload(self) -> None:
        log.info("config_reload requested")
        try:
            new = await asyncio.to_thread(load_config, self.config.path)
        except ConfigError as e:
            log.error("config_reload_failed problems=%d keeping=old", len(e.problems))
            for problem in e.problems:
                log.error("config_problem %s", problem)
            return
        try:
            # load_config read these files moments ago; one that went since is a bad
            # configuration too, and nothing has changed yet.
            http, push = http_settings(new), push_settings(new)
        except (OSError, ValueError) as e:
            log.error(
                "config_reload_failed reason=secret_unreadable error=%s keeping=old",
                type(e).__name__,
            )
            return
        if new.log != self.config.log and self._configure_logging is not None:
            self._configure_logging(new.log)
        old_ifaces = {c.name: c for c in self.config.wireguard.interfaces}
        new_ifaces = {c.name: c for c in new.wireguard.interfaces}
        for name, cfg in old_ifaces.items():
            if new_ifaces.get(name) != cfg:
                backend = self._backends.pop(name, None)
                if backend is not None:
                    # A scrub pass in a worker thread may be using it: then it is
                    # closed as that pass ends, never under it.
                    self._wg_lock.retire(backend)
                self._setup_done.discard(name)
        feed_changed = new.feed != self.config.feed
        self._known.clear()
        self.config = new
        self._open_backends()
        if feed_changed and "feed" in self._tasks:
            self.http_feed = None
            self._start("feed", self._feed_follower())
        # Re-read a file feed even when it did not change: SIGHUP means "look again".
        self._feed_stamp = None
        if new.feed.path is not None:
            await self._load_feed(new.feed.path)
        if new.node_name != self.board.node:
            self.board.rename(new.node_name)
        replaced = {
            "http": await self._replace_http(http),
            "load": await self._replace_sampler(new.load),
            "push": await self._replace_pusher(push),
        }
        self.state.reloads += 1
        log.info(
            "config_reload done interfaces=%d replaced=%s",
            len(new.wireguard.interfaces),
            ",".join(name for name, done in replaced.items() if done) or "none",
        )


def sync_once(config: Config, backend_factory: BackendFactory = open_backend) -> list[SyncOutcome]:
    """``nodeagent sync --once``: one reconcile of every interface from the feed."""
    if config.feed.path is not None:
        desired, _ = read_file_feed(config.feed.path)
    else:
        desired = asyncio.run(_fetch_once(config))
    backends = {c.name: backend_factory(c) for c in config.wireguard.interfaces}
    try:
        for cfg in config.wireguard.interfaces:
            setup = setup_for(cfg)
            if setup is not None:
                backends[cfg.name].setup(setup)
        return reconcile_all(config, backends, desired, utcnow())
    finally:
        for backend in backends.values():
            backend.close()


async def _fetch_once(config: Config) -> DesiredState:
    async with HttpFeed(config.feed) as feed:
        try:
            # The client retries forever; a one-shot command must not.
            return await asyncio.wait_for(feed.next(None), SYNC_ONCE_TIMEOUT)
        except TimeoutError:
            raise FeedError(
                f"no valid feed within {SYNC_ONCE_TIMEOUT:.0f}s "
                f"(errors: {dict(feed.stats.errors) or 'none'})"
            ) from None
