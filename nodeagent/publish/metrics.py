"""The agent's own Prometheus metrics: instruments for events, one collector for state.

Events (a reconcile pass, a peer operation, a refused feed, a push, a failed
load sample, a service restart, a reload) are counted the moment they happen
with client_python's own ``Counter`` and ``Histogram``, on the agent's own
``CollectorRegistry``. What mirrors state (the published load, the uplinks' own
byte counters, the peers on each interface, what the guards hold back, the
feed's age, readiness, which services run) is rendered at scrape time by one
custom collector, :class:`StateCollector`, from a :class:`MirroredState` the
agent assembles from cached values: a scrape never touches the kernel or the
feed. The process collector adds resident memory, CPU time and open files.

Labels are interface names, operation kinds, problem codes and service names,
never anything about a peer or an OpenVPN user: a label per peer would be a per-user time series
(README, "Privacy").
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client import Counter, Histogram, ProcessCollector, disable_created_metrics
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from nodeagent import __version__
from nodeagent.load.counters import LinkCounters
from nodeagent.load.meter import LoadReport

__all__ = [
    "DURATION_BUCKETS",
    "AgentMetrics",
    "MirroredState",
    "StateCollector",
    "feed_age",
]

# No ``*_created`` series: a counter's creation time says nothing an operator needs.
disable_created_metrics()  # type: ignore[no-untyped-call]

# A reconcile ranges from a millisecond (nothing to do) to tens of seconds (a
# first load of 20,000 peers through a userspace daemon).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OPERATIONS = ("added", "updated", "removed")


class _Outcome(Protocol):
    """The shape :meth:`AgentMetrics.record` reads; ``sync.SyncOutcome`` has it."""

    @property
    def interface(self) -> str: ...
    @property
    def added(self) -> int: ...
    @property
    def updated(self) -> int: ...
    @property
    def removed(self) -> int: ...
    @property
    def ms(self) -> float: ...


@dataclass(frozen=True, slots=True)
class MirroredState:
    """The state a scrape shows, as cached by the agent's services.

    ``held`` maps an interface to (removals held back, additions over the
    limit) as of its last pass; ``services`` maps each service to whether it runs.
    """

    load: LoadReport | None = None
    links: Mapping[str, LinkCounters] = field(default_factory=dict)
    peers: Mapping[str, int] = field(default_factory=dict)
    held: Mapping[str, tuple[int, int]] = field(default_factory=dict)
    feed_age_seconds: float | None = None
    ready: bool = False
    services: Mapping[str, bool] = field(default_factory=dict)
    # OpenVPN instances by tun device: whether the agent holds their management connection.
    openvpn: Mapping[str, bool] = field(default_factory=dict)


class AgentMetrics:
    """The agent's registry and the instruments its services count events with.

    The instruments are thread-safe: the reconcile pass records from its worker thread.
    """

    def __init__(self, state: Callable[[], MirroredState], *, process: bool = True) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.reconcile_duration = Histogram(
            "nodeagent_reconcile_duration_seconds",
            "Time of one successful reconcile of one interface (read back, plan, apply).",
            ["interface"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.peer_operations = Counter(
            "nodeagent_reconcile_peer_operations",
            "Peers added, updated and removed by reconciles.",
            ["interface", "operation"],
            registry=r,
        )
        self.reconcile_passes = Counter(
            "nodeagent_reconcile_passes", "Reconcile passes that succeeded.", registry=r
        )
        self.reconcile_errors = Counter(
            "nodeagent_reconcile_errors", "Reconcile passes that failed.", registry=r
        )
        self.feed_errors = Counter(
            "nodeagent_feed_errors", "Feed documents rejected or unreadable.", registry=r
        )
        self.push_successes = Counter(
            "nodeagent_push_successes", "Status pushes the collector accepted.", registry=r
        )
        self.push_failures = Counter(
            "nodeagent_push_failures",
            "Status pushes that failed (network error or refused by the collector).",
            registry=r,
        )
        self.load_sample_errors = Counter(
            "nodeagent_load_sample_errors",
            "Load samples whose interface counters could not be read.",
            registry=r,
        )
        self.service_restarts = Counter(
            "nodeagent_service_restarts",
            "Restarts of a service that failed (the daemon itself went on).",
            ["service"],
            registry=r,
        )
        self.config_reloads = Counter(
            "nodeagent_config_reloads", "Configurations a reload took over.", registry=r
        )
        self.openvpn_logins = {
            outcome: Counter(f"nodeagent_openvpn_logins_{outcome}", help_text, registry=r)
            for outcome, help_text in (
                ("accepted", "OpenVPN logins accepted (client-auth-nt)."),
                ("refused", "OpenVPN logins refused: unknown user, wrong password, expired."),
                ("overloaded", "OpenVPN logins refused unchecked: too many were waiting."),
            )
        }
        self.openvpn_sessions_ended = Counter(
            "nodeagent_openvpn_sessions_ended",
            "OpenVPN sessions the agent ended (account expired or left the feed).",
            registry=r,
        )
        self.openvpn_protocol_errors = Counter(
            "nodeagent_openvpn_protocol_errors",
            "Management protocol anomalies (line too long, block cut, stray line).",
            ["problem"],
            registry=r,
        )
        if process:
            ProcessCollector(namespace="nodeagent", registry=r)
        r.register(StateCollector(state))

    def record(self, outcome: _Outcome) -> None:
        """Count one successful pass over one interface."""
        self.reconcile_duration.labels(outcome.interface).observe(outcome.ms / 1000)
        for op in OPERATIONS:
            self.peer_operations.labels(outcome.interface, op).inc(getattr(outcome, op))

    def pushed(self, ok: bool) -> None:
        (self.push_successes if ok else self.push_failures).inc()


class StateCollector(Collector):
    """Renders the :class:`MirroredState` that ``source`` returns; ``source`` must not block."""

    def __init__(self, source: Callable[[], MirroredState]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Registration calls describe(); returning nothing here means the source is
        # not asked for a state before the agent has one.
        return []

    def collect(self) -> Iterable[Metric]:
        snap = self._source()
        yield from _build_info()
        yield from _load(snap.load)
        yield from _links(snap.links)
        yield from _interfaces(snap)
        if snap.feed_age_seconds is not None:
            yield GaugeMetricFamily(
                "nodeagent_feed_age_seconds",
                "Seconds since the feed last proved the held state current.",
                value=snap.feed_age_seconds,
            )
        yield GaugeMetricFamily(
            "nodeagent_ready", "1 while /readyz answers 200.", value=int(snap.ready)
        )
        up = GaugeMetricFamily(
            "nodeagent_service_up",
            "1 while a service runs, 0 while it waits for its restart.",
            labels=["service"],
        )
        for name in sorted(snap.services):
            up.add_metric([name], int(snap.services[name]))
        yield up
        ovpn = GaugeMetricFamily(
            "nodeagent_openvpn_up",
            "1 while the agent holds an OpenVPN instance's management connection.",
            labels=["interface"],
        )
        for name in sorted(snap.openvpn):
            ovpn.add_metric([name], int(snap.openvpn[name]))
        yield ovpn


def _build_info() -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "nodeagent_build_info",
        "Always 1; the labels name the agent's version.",
        labels=["version", "python"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info


def _load(report: LoadReport | None) -> Iterable[Metric]:
    gauges: list[tuple[str, str, float | None]] = []

    def per_byte(bps: int | None) -> float | None:
        # Prometheus' base unit is the byte; the status document speaks bits.
        return None if bps is None else bps / 8

    if report is not None:
        gauges = [
            ("percent", "Published load: max(link_percent, cpu_percent).", report.percent),
            ("link_percent", "Published uplink load, percent of capacity.", report.link_percent),
            ("cpu_percent", "Published CPU load, percent.", report.cpu_percent),
            ("receive_bytes_per_second", "Published uplink receive rate.", per_byte(report.rx_bps)),
            ("transmit_bytes_per_second", "Published uplink send rate.", per_byte(report.tx_bps)),
            ("capacity_bytes_per_second", "Uplink capacity.", per_byte(report.capacity_bps)),
            ("window_seconds", "Window the load is averaged over.", report.window_seconds),
        ]  # fmt: skip
    for name, help_text, value in gauges:
        if value is not None:
            yield GaugeMetricFamily(f"nodeagent_load_{name}", help_text, value=value)
    degraded = GaugeMetricFamily(
        "nodeagent_load_degraded",
        "1 while the load figure is degraded; the problem label names why.",
        labels=["problem"],
    )
    for problem in report.problems if report is not None else ():
        degraded.add_metric([problem], 1)
    yield degraded


def _links(links: Mapping[str, LinkCounters]) -> Iterable[Metric]:
    rx = CounterMetricFamily(
        "nodeagent_interface_receive_bytes",
        "Bytes received by a load interface (the kernel's 64-bit counter).",
        labels=["interface"],
    )
    tx = CounterMetricFamily(
        "nodeagent_interface_transmit_bytes",
        "Bytes sent by a load interface (the kernel's 64-bit counter).",
        labels=["interface"],
    )
    for name in sorted(links):
        rx.add_metric([name], links[name].rx_bytes)
        tx.add_metric([name], links[name].tx_bytes)
    yield rx
    yield tx


def _interfaces(snap: MirroredState) -> Iterable[Metric]:
    peers = GaugeMetricFamily(
        "nodeagent_wireguard_peers",
        "Peers configured on an interface after its last pass (a count, never who).",
        labels=["interface"],
    )
    held_removals = GaugeMetricFamily(
        "nodeagent_reconcile_held_removals",
        "Feed removals the mass-removal guard held back in the last pass (feed.max_removal_ratio).",
        labels=["interface"],
    )
    held_additions = GaugeMetricFamily(
        "nodeagent_reconcile_held_additions",
        "Peers not added in the last pass because the implementation takes no more.",
        labels=["interface"],
    )
    for name in sorted(snap.peers):
        peers.add_metric([name], snap.peers[name])
    for name in sorted(snap.held):
        removals, additions = snap.held[name]
        held_removals.add_metric([name], removals)
        held_additions.add_metric([name], additions)
    yield peers
    yield held_removals
    yield held_additions


def feed_age(loaded_at: float | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds since ``loaded_at`` (a ``time.time()`` value), never negative."""
    if loaded_at is None:
        return None
    return max(now() - loaded_at, 0.0)
