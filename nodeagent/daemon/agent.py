"""The daemon: its services under one supervisor, signals, reload, health and readiness.

Readable top to bottom: ``run()`` catches the signals (the only place that
does), starts the services, and then waits: SIGTERM/SIGINT stop, SIGHUP
reloads. A reload reads the new configuration and the secrets it names (a bad
one keeps the old one running), diffs it against the running one
(:func:`nodeagent.daemon.reload.plan_reload`) and hands each service its new
settings, all in :meth:`Agent._reload`. A service that fails is restarted by
the supervisor with backoff and shows as degraded; the daemon never stops
because of one. The kernel is never touched on the way out: stopping or
restarting the agent leaves every peer where it is.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from nodeagent import __version__
from nodeagent.config.agent import Config, ConfigError, LogConfig, load_config
from nodeagent.core.backoff import Backoff
from nodeagent.core.model import DesiredState
from nodeagent.daemon.feedfollow import FeedFollower
from nodeagent.daemon.httpprocess import HttpProcess, ProcessServer
from nodeagent.daemon.openvpn import OpenVPNService
from nodeagent.daemon.outputs import HttpService, PushService, SamplerService, Watchdog
from nodeagent.daemon.peers import BACKEND_GRACE, Interfaces, Reconciler, Scrubber
from nodeagent.daemon.reconcile import (
    BackendFactory,
    SyncFailed,
    reconcile_all,
    sync_once,
    utcnow,
)
from nodeagent.daemon.reload import Settings, plan_reload
from nodeagent.daemon.sdnotify import Notifier
from nodeagent.daemon.service import RESTART_BACKOFF, Service, Supervisor
from nodeagent.load.meter import LoadReport
from nodeagent.load.sampler import LoadSampler
from nodeagent.openvpn.instance import Hooks
from nodeagent.publish.http import HttpServer, Sources
from nodeagent.publish.metrics import AgentMetrics, MirroredState
from nodeagent.publish.push import Pusher, PushState
from nodeagent.publish.status import StatusBoard
from nodeagent.wireguard import open_backend

__all__ = ["Agent", "AgentState", "SyncFailed", "reconcile_all", "sync_once"]

log = logging.getLogger(__name__)

FEED_STALE_FACTOR, FEED_STALE_SLACK = 3, 15.0


@dataclass(frozen=True, slots=True)
class AgentState:
    """What the agent knows about itself, as of one moment; never holds peer data."""

    feed_version: str | None
    # Feed documents refused or unreadable, by kind, across every reload: never backwards.
    feed_errors: Counter[str]
    syncs: int
    sync_errors: int
    first_sync_ok: bool
    last_sync_failed: bool
    reloads: int  # configurations a reload took over (a bad one is not counted)


class Agent:
    def __init__(
        self,
        config: Config,
        *,
        backend_factory: BackendFactory = open_backend,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = utcnow,
        configure_logging: Callable[[LogConfig], None] | None = None,
        restart_backoff: Backoff = RESTART_BACKOFF,
        http_process: HttpProcess | None = None,
    ) -> None:
        """``configure_logging`` applies a reloaded ``log`` section (the CLI owns logging).

        ``restart_backoff``: how long a failed service waits for its restart.
        ``http_process``: where the HTTP endpoints are served (None: in this process).
        """
        self.config = config
        self._notifier = notifier or Notifier()
        self._configure_logging = configure_logging
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reloads = 0
        self.failed = False
        # Load, status and metrics: aggregates only, rendered from cached values.
        self.board = StatusBoard(config.node_name, __version__)
        self._http_process = http_process
        if http_process is not None:
            self.board.watch(http_process.publish_status)
        self.metrics = AgentMetrics(self._mirrored)
        self.registry = self.metrics.registry
        self.sources = Sources(
            status=lambda: self.board.body,
            registry=self.registry,
            health=self._health,
            ready=self._ready,
        )
        self.supervisor = Supervisor(
            backoff=restart_backoff,
            on_change=self._publish_problems,
            on_restart=lambda name: self.metrics.service_restarts.labels(name).inc(),
        )
        self.interfaces = Interfaces(backend_factory)
        self.reconciler = Reconciler(
            config,
            self.interfaces,
            self.metrics,
            clock=clock,
            on_pass=self._publish_problems,
        )
        self.feed = FeedFollower(
            config.feed,
            current=lambda: self.reconciler.desired,
            on_state=self._accept,
            on_problem=self._publish_problems,
            on_error=self.metrics.feed_errors.inc,
        )
        self.scrubber = Scrubber(config.privacy, self.interfaces)
        self.openvpn = OpenVPNService(
            config.openvpn,
            hooks=Hooks(
                auth=lambda outcome: self.metrics.openvpn_logins[outcome].inc(),
                ended=self.metrics.openvpn_sessions_ended.inc,
                changed=self._publish_problems,
                protocol_error=lambda kind: self.metrics.openvpn_protocol_errors.labels(kind).inc(),
            ),
            clock=clock,
        )
        self._http = HttpService(self.sources, None, http_process)
        self._sampler = SamplerService(
            config.load,
            on_report=self._on_load_report,
            on_error=self.metrics.load_sample_errors.inc,
            on_cleared=self.board.clear_report,
        )
        self._push = PushService(None, lambda: self.board.body, PushState())
        self._push_outcome = self.metrics.pushed
        self._watchdog = Watchdog(self._notifier) if self._notifier.watchdog_interval else None
        self._settings: Settings | None = None

    # -- what tests and the CLI look at ------------------------------------------------

    @property
    def state(self) -> AgentState:
        r = self.reconciler
        return AgentState(
            feed_version=self.feed.version,
            feed_errors=self.feed.errors,
            syncs=r.passes,
            sync_errors=r.errors,
            first_sync_ok=r.first_pass_ok,
            last_sync_failed=r.last_pass_failed,
            reloads=self._reloads,
        )

    @property
    def http(self) -> HttpServer | ProcessServer | None:
        return self._http.server

    @property
    def sampler(self) -> LoadSampler | None:
        return self._sampler.sampler

    @property
    def pusher(self) -> Pusher | None:
        return self._push.pusher

    # -- lifecycle -----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stop.set()

    def request_reload(self) -> None:
        self._reload_requested.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.request_reload)
        try:
            # Inside the try: a failed start (an address in use) still closes what opened.
            settings = Settings.read(self.config)
            self._settings = settings
            self._http = HttpService(self.sources, settings.http, self._http_process)
            self._push = PushService(
                settings.push, lambda: self.board.body, PushState(), self._push_outcome
            )
            for service in self._services():
                await self.supervisor.start(service)
            log.info("agent started interfaces=%d", len(self.config.wireguard.interfaces))
            self._notifier.ready()
            await self._wait_for_signals()
        finally:
            self._notifier.stopping()
            log.info("agent stopping")
            # No pass begins from here on (nothing touches the peers on the way out);
            # one already running has its grace from now, whatever else the stop waits for.
            self.interfaces.turns.stop()
            grace_until = loop.time() + BACKEND_GRACE
            await self.supervisor.stop_all()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.interfaces.close(grace_until)
            log.info("agent stopped")

    def _services(self) -> list[Service]:
        services: list[Service] = [
            self._http,
            self.reconciler,
            self.openvpn,
            self.feed,
            self._sampler,
            self._push,
            self.scrubber,
        ]
        if self._watchdog is not None:
            services.append(self._watchdog)
        return services

    async def _wait_for_signals(self) -> None:
        stop = asyncio.ensure_future(self._stop.wait())
        try:
            while not self._stop.is_set():
                reload = asyncio.ensure_future(self._reload_requested.wait())
                await asyncio.wait([stop, reload], return_when=asyncio.FIRST_COMPLETED)
                if self._reload_requested.is_set() and not self._stop.is_set():
                    self._reload_requested.clear()
                    await self._reload()
                reload.cancel()
        finally:
            stop.cancel()

    # -- reload: one diff, applied in one place ------------------------------------------

    async def _reload(self) -> None:
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
            settings = await asyncio.to_thread(Settings.read, new)
        except (OSError, ValueError) as e:
            log.error(
                "config_reload_failed reason=secret_unreadable error=%s keeping=old",
                type(e).__name__,
            )
            return
        assert self._settings is not None
        plan = plan_reload(self._settings, settings)
        if plan.log is not None and self._configure_logging is not None:
            self._configure_logging(plan.log)
            if self._http_process is not None:
                self._http_process.publish_log(plan.log)
        self.config, self._settings = new, settings
        self.reconciler.update(new, plan.interfaces)
        self.openvpn.update(new.openvpn)
        await self.feed.update(new.feed)
        if plan.privacy:
            self.scrubber.update(new.privacy)
        if plan.node_name is not None:
            self.board.rename(plan.node_name)
        replaced = {
            "http": await self._http.update(settings.http),
            "load": await self._sampler.update(new.load),
            "push": await self._push.update(settings.push),
        }
        self._reloads += 1
        self.metrics.config_reloads.inc()
        log.info(
            "config_reload done interfaces=%d replaced=%s",
            len(new.wireguard.interfaces),
            ",".join(name for name, done in replaced.items() if done) or "none",
        )

    # -- between the services -------------------------------------------------------------

    def _accept(self, desired: DesiredState) -> None:
        self.reconciler.offer(desired)
        self.openvpn.offer(desired.users)
        self._publish_problems()

    def _on_load_report(self, report: LoadReport) -> None:
        self.board.update(report, self._problems())

    def _publish_problems(self) -> None:
        self.board.update(problems=self._problems())

    # -- what the status endpoints read (cached, never the kernel) ---------------------

    def _problems(self) -> list[str]:
        problems: list[str] = []
        r = self.reconciler
        if r.last_pass_failed:
            problems.append("reconcile_failing")
        if r.desired is None:
            problems.append("no_feed")
        if self.feed.rejected:
            problems.append("feed_rejected")
        if any(held for held, _ in r.held.values()):
            problems.append("removals_held")
        if any(held for _, held in r.held.values()):
            problems.append("peer_limit")
        if self.supervisor.degraded:
            problems.append("service_restarting")
        if self.openvpn.unreachable:
            problems.append("openvpn_unreachable")
        return problems

    def _ready(self) -> str | None:
        r = self.reconciler
        if r.last_pass_failed:
            return "reconcile_failing"
        if not r.first_pass_ok:
            return "first_reconcile_pending"
        if self.feed.rejected:
            # The service offers a state the agent refused: what it holds is not current.
            return "feed_rejected"
        age = self.feed.age()
        limit = FEED_STALE_FACTOR * self.config.feed.long_poll + FEED_STALE_SLACK
        if self.config.feed.url is not None and age is not None and age > limit:
            # Peers stay as they are (fail static); this only tells the poller.
            return f"feed_stale age_s={age:.0f}"
        return None

    def _health(self) -> str | None:
        s = self.sampler
        if s is None or s.last_sample_at is None:
            return None
        late = time.monotonic() - s.last_sample_at > 3 * s.config.sample_interval + 5
        return "load_sampler_stalled" if late else None

    def _mirrored(self) -> MirroredState:
        s = self.sampler
        degraded = self.supervisor.degraded
        return MirroredState(
            load=s.meter.report if s else None,
            links=s.links if s else {},
            peers=dict(self.reconciler.peers),
            held=dict(self.reconciler.held),
            feed_age_seconds=self.feed.age(),
            ready=self._ready() is None,
            services={svc.name: svc.name not in degraded for svc in self._services()},
            openvpn=self.openvpn.up,
        )
