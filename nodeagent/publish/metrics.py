"""The agent's own Prometheus metrics, read from cached snapshots.

A scrape never touches the kernel or the feed: :class:`AgentCollector` calls a
``source`` that returns a :class:`MetricsSnapshot` of what the agent's tasks
last recorded, and renders it. The agent's own ``CollectorRegistry`` keeps the
default process/platform collectors of the global registry out, so the
exposition is exactly what this file lists.

Labels are interface names and operation kinds, never anything about a peer:
a label per peer would be a per-user time series (README, "Privacy").
"""

from __future__ import annotations

import bisect
import platform
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from nodeagent import __version__
from nodeagent.load.counters import LinkCounters
from nodeagent.load.meter import LoadReport

__all__ = [
    "DURATION_BUCKETS",
    "AgentCollector",
    "MetricsSnapshot",
    "ReconcileStats",
    "ReconcileTotals",
    "make_registry",
]

# A reconcile ranges from a millisecond (nothing to do) to tens of seconds (a
# first load of 20,000 peers through a userspace daemon).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
OPERATIONS = ("added", "updated", "removed")


@dataclass(frozen=True, slots=True)
class ReconcileTotals:
    """Cumulative reconcile figures of one interface."""

    passes: int = 0
    bucket_counts: tuple[int, ...] = (0,) * (len(DURATION_BUCKETS) + 1)
    seconds_sum: float = 0.0
    operations: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(OPERATIONS, 0))
    peers: int | None = None
    # As of the last pass: what the removal guard and the peer limit held back.
    held_removals: int = 0
    held_additions: int = 0


class _Outcome(Protocol):
    """The shape ``ReconcileStats.record`` reads; ``sync.SyncOutcome`` has it."""

    @property
    def interface(self) -> str: ...
    @property
    def added(self) -> int: ...
    @property
    def updated(self) -> int: ...
    @property
    def removed(self) -> int: ...
    @property
    def unchanged(self) -> int: ...
    @property
    def ms(self) -> float: ...
    @property
    def peer_count(self) -> int: ...
    @property
    def held_removals(self) -> int: ...
    @property
    def held_additions(self) -> int: ...


class ReconcileStats:
    """Accumulates reconcile outcomes; the reconcile thread writes, scrapes read copies.

    Takes anything shaped like ``sync.SyncOutcome``.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals: dict[str, ReconcileTotals] = {}

    def record(self, outcome: _Outcome) -> None:
        """Count one successful pass over one interface."""
        seconds = outcome.ms / 1000
        with self._lock:
            old = self._totals.get(outcome.interface, ReconcileTotals())
            counts = list(old.bucket_counts)
            counts[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
            ops = dict(old.operations)
            ops["added"] += outcome.added
            ops["updated"] += outcome.updated
            ops["removed"] += outcome.removed
            self._totals[outcome.interface] = ReconcileTotals(
                passes=old.passes + 1,
                bucket_counts=tuple(counts),
                seconds_sum=old.seconds_sum + seconds,
                operations=ops,
                # What the interface holds after the pass: kept, updated and new peers.
                peers=outcome.peer_count,
                held_removals=outcome.held_removals,
                held_additions=outcome.held_additions,
            )

    def snapshot(self) -> dict[str, ReconcileTotals]:
        with self._lock:
            return dict(self._totals)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """Everything a scrape shows, as cached by the agent's tasks.

    ``feed_age_seconds`` is None before a feed was ever loaded;
    ``configured_peers`` overrides the per-interface counts that ``reconcile``
    derives from the last pass (e.g. desired peers from the feed).
    """

    load: LoadReport | None = None
    links: Mapping[str, LinkCounters] = field(default_factory=dict)
    load_sample_errors: int = 0
    reconcile: Mapping[str, ReconcileTotals] = field(default_factory=dict)
    reconcile_passes: int = 0
    reconcile_errors: int = 0
    feed_age_seconds: float | None = None
    feed_errors: int = 0
    push_successes: int = 0
    push_failures: int = 0
    configured_peers: Mapping[str, int] = field(default_factory=dict)
    ready: bool = False


class AgentCollector(Collector):
    """Renders the snapshot that ``source`` returns; ``source`` must not block."""

    def __init__(self, source: Callable[[], MetricsSnapshot]) -> None:
        self._source = source

    def describe(self) -> Iterable[Metric]:
        # Registration calls describe(); returning nothing here means the source is
        # not asked for a snapshot before the agent has one.
        return []

    def collect(self) -> Iterable[Metric]:
        snap = self._source()
        yield from _build_info()
        yield from _load(snap)
        yield from _links(snap.links)
        yield from _reconcile(snap)
        yield from _feed(snap)
        yield CounterMetricFamily(
            "nodeagent_push_successes",
            "Status pushes the collector accepted.",
            value=snap.push_successes,
        )
        yield CounterMetricFamily(
            "nodeagent_push_failures",
            "Status pushes that failed (network error or refused by the collector).",
            value=snap.push_failures,
        )
        yield GaugeMetricFamily(
            "nodeagent_ready", "1 once the first reconcile succeeded.", value=int(snap.ready)
        )


def _build_info() -> Iterable[Metric]:
    info = GaugeMetricFamily(
        "nodeagent_build_info",
        "Always 1; the labels name the agent's version.",
        labels=["version", "python"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    yield info


def _load(snap: MetricsSnapshot) -> Iterable[Metric]:
    report = snap.load
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
    yield CounterMetricFamily(
        "nodeagent_load_sample_errors",
        "Load samples whose interface counters could not be read.",
        value=snap.load_sample_errors,
    )


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


def _reconcile(snap: MetricsSnapshot) -> Iterable[Metric]:
    duration = HistogramMetricFamily(
        "nodeagent_reconcile_duration_seconds",
        "Time of one successful reconcile of one interface (read back, plan, apply).",
        labels=["interface"],
    )
    ops = CounterMetricFamily(
        "nodeagent_reconcile_peer_operations",
        "Peers added, updated and removed by reconciles.",
        labels=["interface", "operation"],
    )
    peers = GaugeMetricFamily(
        "nodeagent_wireguard_peers",
        "Peers configured on an interface (a count, never who).",
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
    peer_counts: dict[str, int] = {}
    for name in sorted(snap.reconcile):
        t = snap.reconcile[name]
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, count in zip((*DURATION_BUCKETS, float("inf")), t.bucket_counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        duration.add_metric([name], buckets, t.seconds_sum)
        for op in OPERATIONS:
            ops.add_metric([name, op], t.operations.get(op, 0))
        if t.peers is not None:
            peer_counts[name] = t.peers
        held_removals.add_metric([name], t.held_removals)
        held_additions.add_metric([name], t.held_additions)
    peer_counts.update(snap.configured_peers)
    for name in sorted(peer_counts):
        peers.add_metric([name], peer_counts[name])
    yield duration
    yield ops
    yield peers
    yield held_removals
    yield held_additions
    yield CounterMetricFamily(
        "nodeagent_reconcile_passes",
        "Reconcile passes that succeeded.",
        value=snap.reconcile_passes,
    )
    yield CounterMetricFamily(
        "nodeagent_reconcile_errors", "Reconcile passes that failed.", value=snap.reconcile_errors
    )


def _feed(snap: MetricsSnapshot) -> Iterable[Metric]:
    if snap.feed_age_seconds is not None:
        yield GaugeMetricFamily(
            "nodeagent_feed_age_seconds",
            "Seconds since the feed was last loaded successfully.",
            value=snap.feed_age_seconds,
        )
    yield CounterMetricFamily(
        "nodeagent_feed_errors", "Feed documents rejected or unreadable.", value=snap.feed_errors
    )


def make_registry(source: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    """A fresh registry holding only the agent's collector (no global default collectors)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(source))
    return registry


def feed_age(loaded_at: float | None, now: Callable[[], float] = time.time) -> float | None:
    """Seconds since ``loaded_at`` (a ``time.time()`` value), never negative."""
    if loaded_at is None:
        return None
    return max(now() - loaded_at, 0.0)
