"""The collector's own ``/metrics``: pushes by outcome, the fleet, the store.

Labels are outcomes and node names (the servers are public; their names are
on the page), never anything about a visitor or a sender's address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import Counter, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from nodeagent.central.collector.fleet import Snapshot

# No ``*_created`` series, as on the agent.
disable_created_metrics()  # type: ignore[no-untyped-call]

__all__ = ["CollectorMetrics"]


class _FleetCollector(Collector):
    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        snap = self._snapshot()
        online = GaugeMetricFamily(
            "nodeagent_collector_node_online",
            "1 while the server's newest figure is younger than stale_after.",
            labels=["node"],
        )
        load = GaugeMetricFamily(
            "nodeagent_collector_node_load_percent",
            "The server's published load as the page shows it (online servers only).",
            labels=["node"],
        )
        updated = GaugeMetricFamily(
            "nodeagent_collector_node_updated_timestamp_seconds",
            "When the server's newest figure arrived (unix time).",
            labels=["node"],
        )
        for s in snap.servers:
            online.add_metric([s.config.name], 1.0 if s.online else 0.0)
            if s.percent is not None:
                load.add_metric([s.config.name], s.percent)
            if s.reading is not None:
                updated.add_metric([s.config.name], s.reading.at)
        yield online
        yield load
        yield updated
        yield GaugeMetricFamily(
            "nodeagent_collector_snapshot_version",
            "Version of the published fleet state (ETags follow it).",
            value=snap.version,
        )


class CollectorMetrics:
    """Counters of events plus the fleet's state, on the collector's own registry."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.pushes = Counter(
            "nodeagent_collector_pushes",
            "Pushes received, by outcome: accepted, or the reason for refusing.",
            ["outcome"],
            registry=self.registry,
        )
        self.store_errors = Counter(
            "nodeagent_collector_store_errors",
            "History writes that failed (the figures stay in memory and are retried).",
            registry=self.registry,
        )
        self.source_errors = Counter(
            "nodeagent_collector_source_errors",
            "Prometheus queries that failed (source: prometheus).",
            registry=self.registry,
        )
        self.reloads = Counter(
            "nodeagent_collector_config_reloads",
            "Configurations a SIGHUP took over; a refused one is not counted.",
            registry=self.registry,
        )
        self.registry.register(_FleetCollector(snapshot))
