"""The load history in SQLite: each server's published load, bounded, surviving restarts.

Aggregates only: one row holds one server's published load percentage and
uplink rates at one time, nothing about a visitor or a user. Two tiers:

* ``raw``: the figures as received, at most one row per server every
  ``RAW_SPACING`` seconds (the caller thins them), kept ``RAW_KEEP`` (24 h);
* ``bucket``: older rows folded into ``BUCKET``-second (10 min) averages, with
  the maximum, kept ``BUCKET_KEEP`` (30 days).

So a server costs at most 8,640 raw rows and 4,320 buckets, whatever its push
interval. ``latest`` keeps the newest figure of each server and the newest
push timestamp accepted from it, so that a restarted collector shows the
fleet at once and still refuses a replayed push.

The database is in WAL mode and every write, folding included, is one
transaction: a crash mid-write leaves the last committed state. The store is
synchronous and not thread-safe: the collector calls it from one worker
thread only (:class:`StoreThread`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TypeVar

from nodeagent.central.collector.document import Reading

__all__ = [
    "BUCKET",
    "BUCKET_KEEP",
    "RAW_KEEP",
    "RAW_SPACING",
    "Bucket",
    "HistoryStore",
    "Latest",
    "StoreThread",
]

T = TypeVar("T")

RAW_SPACING = 10
RAW_KEEP = 24 * 3600
BUCKET = 600
BUCKET_KEEP = 30 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS raw (
    node TEXT NOT NULL, ts INTEGER NOT NULL, percent REAL NOT NULL,
    rx INTEGER, tx INTEGER, cap INTEGER,
    PRIMARY KEY (node, ts)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS raw_ts ON raw (ts);
CREATE TABLE IF NOT EXISTS bucket (
    node TEXT NOT NULL, start INTEGER NOT NULL, n INTEGER NOT NULL,
    percent REAL NOT NULL, percent_max REAL NOT NULL, rx REAL, tx REAL, cap INTEGER,
    PRIMARY KEY (node, start)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS latest (
    node TEXT PRIMARY KEY, at REAL NOT NULL, push_ts INTEGER NOT NULL,
    percent REAL, rx INTEGER, tx INTEGER, cap INTEGER, degraded INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Latest:
    """A server's newest figure and the newest push timestamp accepted from it."""

    reading: Reading
    push_ts: int


@dataclass(frozen=True, slots=True)
class Bucket:
    start: int
    n: int
    percent: float
    percent_max: float


class HistoryStore:
    """The SQLite file; open with :meth:`open`, use from one thread at a time."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    @classmethod
    def open(cls, path: str) -> HistoryStore:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a power cut may lose the last commits, never consistency.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.executescript(_SCHEMA)
        return cls(conn)

    def close(self) -> None:
        self._conn.close()

    def write(
        self,
        points: Iterable[tuple[str, Reading]],
        latest: Iterable[tuple[str, Latest]],
        now: float,
        *,
        fold: bool = True,
    ) -> None:
        """Record history points and newest figures (and fold and prune), in one transaction."""
        c = self._conn
        c.execute("BEGIN IMMEDIATE")
        try:
            c.executemany(
                "INSERT OR REPLACE INTO raw VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (node, int(r.at), r.percent, r.rx_bps, r.tx_bps, r.capacity_bps)
                    for node, r in points
                    if r.percent is not None
                ],
            )
            c.executemany(
                "INSERT OR REPLACE INTO latest VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (node, x.reading.at, x.push_ts, x.reading.percent, x.reading.rx_bps,
                     x.reading.tx_bps, x.reading.capacity_bps, int(x.reading.degraded))
                    for node, x in latest
                ],
            )  # fmt: skip
            if fold:
                self._fold(now)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _fold(self, now: float) -> None:
        """Raw rows older than RAW_KEEP become (or merge into) buckets; old buckets go."""
        c = self._conn
        # Whole buckets only: a bucket is folded once every row of it is old enough.
        cutoff = (int(now) - RAW_KEEP) // BUCKET * BUCKET
        c.execute(
            """
            INSERT INTO bucket (node, start, n, percent, percent_max, rx, tx, cap)
            SELECT node, ts / ? * ?, count(*), avg(percent), max(percent),
                   avg(rx), avg(tx), max(cap)
            FROM raw WHERE ts < ? GROUP BY node, ts / ?
            ON CONFLICT (node, start) DO UPDATE SET
                percent = (percent * n + excluded.percent * excluded.n) / (n + excluded.n),
                percent_max = max(percent_max, excluded.percent_max),
                rx = (coalesce(rx, 0) * n + coalesce(excluded.rx, 0) * excluded.n)
                     / (n + excluded.n),
                tx = (coalesce(tx, 0) * n + coalesce(excluded.tx, 0) * excluded.n)
                     / (n + excluded.n),
                cap = max(coalesce(cap, 0), coalesce(excluded.cap, 0)),
                n = n + excluded.n
            """,
            (BUCKET, BUCKET, cutoff, BUCKET),
        )
        c.execute("DELETE FROM raw WHERE ts < ?", (cutoff,))
        c.execute("DELETE FROM bucket WHERE start < ?", (int(now) - BUCKET_KEEP,))

    def latest(self) -> dict[str, Latest]:
        rows = self._conn.execute(
            "SELECT node, at, push_ts, percent, rx, tx, cap, degraded FROM latest"
        ).fetchall()
        return {
            node: Latest(Reading(at, percent, rx, tx, cap, bool(degraded)), push_ts)
            for node, at, push_ts, percent, rx, tx, cap, degraded in rows
        }

    def raw_since(self, since: float) -> dict[str, list[tuple[int, float]]]:
        """Every raw (ts, percent) from ``since`` on, per server, oldest first."""
        out: dict[str, list[tuple[int, float]]] = {}
        for node, ts, percent in self._conn.execute(
            "SELECT node, ts, percent FROM raw WHERE ts >= ? ORDER BY node, ts", (int(since),)
        ):
            out.setdefault(node, []).append((ts, percent))
        return out

    def buckets(self, node: str, since: float = 0) -> list[Bucket]:
        rows = self._conn.execute(
            "SELECT start, n, percent, percent_max FROM bucket WHERE node = ? AND start >= ? "
            "ORDER BY start",
            (node, int(since)),
        ).fetchall()
        return [Bucket(*row) for row in rows]

    def counts(self) -> tuple[int, int]:
        """(raw rows, buckets): for the metrics and the tests."""
        raw = self._conn.execute("SELECT count(*) FROM raw").fetchone()[0]
        buckets = self._conn.execute("SELECT count(*) FROM bucket").fetchone()[0]
        return int(raw), int(buckets)


class StoreThread:
    """Runs every call of one :class:`HistoryStore` on one worker thread, off the event loop."""

    def __init__(self) -> None:
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="history")

    async def call(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
