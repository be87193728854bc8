"""The fleet as the collector knows it: each server's newest figure and its 24 h at a glance.

Pure: the caller passes the time. Figures come in through :meth:`Fleet.accept`
(a verified push, or a Prometheus poll); :meth:`Fleet.tick`, once a second,
publishes a new :class:`Snapshot` when anything changed, a server went silent
included (new figures at most every ``publish_every`` seconds). Every page
and API answer is made from the current snapshot, and its ``version`` keys
the caches and the ETags: a flood of visitors costs one render per version,
whatever the rate of pushes.

The 24 h history kept here is 15-minute averages (96 points a server); the
full history is the store's (``store.py``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nodeagent.central.collector.config import NodeConfig
from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.store import RAW_SPACING

__all__ = ["HISTORY_SPAN", "HISTORY_STEP", "Fleet", "Server", "Snapshot"]

HISTORY_STEP = 900
HISTORY_SPAN = 24 * 3600


@dataclass(frozen=True, slots=True)
class Server:
    """One row of the page and of the APIs, as of one snapshot."""

    config: NodeConfig
    online: bool
    reading: Reading | None
    history: tuple[tuple[int, float], ...]

    @property
    def percent(self) -> float | None:
        """The published load, clamped to 0..100; None when offline or without a figure."""
        if not self.online or self.reading is None or self.reading.percent is None:
            return None
        return min(100.0, max(0.0, self.reading.percent))


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: int
    at: float
    servers: tuple[Server, ...]

    @property
    def online(self) -> int:
        return sum(s.online for s in self.servers)


@dataclass
class _Node:
    config: NodeConfig
    reading: Reading | None = None
    recorded_at: float = float("-inf")
    # bucket start -> (sum of percent, count)
    history: dict[int, tuple[float, int]] = field(default_factory=dict)

    def add_history(self, at: float, percent: float) -> None:
        start = int(at) // HISTORY_STEP * HISTORY_STEP
        total, n = self.history.get(start, (0.0, 0))
        self.history[start] = (total + percent, n + 1)


class Fleet:
    """Every configured server's state; one per collector, touched from the event loop only."""

    def __init__(
        self, nodes: Iterable[NodeConfig], stale_after: float, publish_every: float = 0.0
    ) -> None:
        self.stale_after = stale_after
        # New figures wait this long for the next snapshot (a server going
        # online or offline does not): each snapshot costs a render.
        self.publish_every = publish_every
        self._nodes: dict[str, _Node] = {n.name: _Node(n) for n in nodes}
        self._dirty = True
        self._online: frozenset[str] = frozenset()
        self.snapshot = Snapshot(0, 0.0, ())
        # Figures that are due for the store: drained by the collector's writer.
        self.pending: list[tuple[str, Reading]] = []
        # Servers whose newest figure the store has not seen yet.
        self.changed: set[str] = set()

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self._nodes)

    def reconfigure(self, nodes: Iterable[NodeConfig], stale_after: float) -> None:
        """Take a new node list: servers that stay keep their figures and history."""
        old = self._nodes
        self._nodes = {}
        for n in nodes:
            node = old.get(n.name) or _Node(n)
            node.config = n
            self._nodes[n.name] = node
        self.stale_after = stale_after
        self._dirty = True

    def accept(self, name: str, reading: Reading) -> None:
        """A new figure for ``name`` (a configured server); queued for the store when due."""
        node = self._nodes[name]
        node.reading = reading
        self._dirty = True
        self.changed.add(name)
        if reading.percent is not None:
            node.add_history(reading.at, reading.percent)
            if reading.at - node.recorded_at >= RAW_SPACING:
                node.recorded_at = reading.at
                self.pending.append((name, reading))

    def restore(
        self, name: str, reading: Reading | None, history: Iterable[tuple[int, float]]
    ) -> None:
        """What the store kept across a restart: the newest figure and the last 24 h."""
        node = self._nodes.get(name)
        if node is None:
            return
        if reading is not None:
            node.reading = reading
            node.recorded_at = reading.at
        for at, percent in history:
            node.add_history(at, percent)
        self._dirty = True

    def latest(self) -> Mapping[str, Reading]:
        return {name: n.reading for name, n in self._nodes.items() if n.reading is not None}

    def online(self, now: float) -> frozenset[str]:
        return frozenset(
            name
            for name, n in self._nodes.items()
            if n.reading is not None and now - n.reading.at <= self.stale_after
        )

    def tick(self, now: float) -> tuple[frozenset[str], frozenset[str]]:
        """Publish a new snapshot if anything changed; returns (came online, went offline)."""
        online = self.online(now)
        came, went = online - self._online, self._online - online
        due = self._dirty and now - self.snapshot.at >= self.publish_every
        if not (due or came or went):
            return came, went
        self._online = online
        self._dirty = False
        horizon = int(now) - HISTORY_SPAN
        servers = []
        for name, n in self._nodes.items():
            for start in [s for s in n.history if s < horizon]:
                del n.history[start]
            history = tuple(
                (start, round(total / count, 1))
                for start, (total, count) in sorted(n.history.items())
            )
            servers.append(Server(n.config, name in online, n.reading, history))
        self.snapshot = Snapshot(self.snapshot.version + 1, now, tuple(servers))
        return came, went
