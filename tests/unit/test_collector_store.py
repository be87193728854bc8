"""The history store: tiers, folding into 10-minute buckets, bounds, restart, a crash mid-write."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.store import (
    BUCKET,
    BUCKET_KEEP,
    RAW_KEEP,
    HistoryStore,
    Latest,
)

T0 = 1_800_000_000 // BUCKET * BUCKET  # a bucket boundary


def reading(at: float, percent: float, rx: int = 1000) -> Reading:
    return Reading(at, percent, rx, rx // 2, 10_000_000)


def test_raw_then_buckets_then_gone(tmp_path: Path) -> None:
    store = HistoryStore.open(str(tmp_path / "h.sqlite"))
    # One bucket's worth of points: 60 at 10 s, load 0..59 %.
    points = [("a", reading(T0 + 10 * i, float(i))) for i in range(60)]
    store.write(points, [], now=T0 + 600)
    assert store.counts() == (60, 0)
    assert [p for _, p in store.raw_since(T0)["a"]] == [float(i) for i in range(60)]

    # A day later the whole bucket is old: folded into one row, raw rows gone.
    store.write([], [], now=T0 + RAW_KEEP + BUCKET)
    assert store.counts() == (0, 1)
    (b,) = store.buckets("a")
    assert (b.start, b.n, b.percent, b.percent_max) == (T0, 60, 29.5, 59.0)

    # A bucket not yet whole stays raw until it is.
    store.write([("a", reading(T0 + BUCKET + 5, 80.0))], [], now=T0 + RAW_KEEP + BUCKET + 10)
    assert store.counts() == (1, 1)

    # Thirty days on, the bucket is gone too.
    store.write([], [], now=T0 + BUCKET_KEEP + 2 * BUCKET + RAW_KEEP)
    assert store.counts() == (0, 0)
    store.close()


def test_folding_merges_into_a_bucket_already_there(tmp_path: Path) -> None:
    store = HistoryStore.open(str(tmp_path / "h.sqlite"))
    store.write([("a", reading(T0, 10.0)), ("a", reading(T0 + 10, 20.0))], [], now=T0)
    store.write([], [], now=T0 + RAW_KEEP + BUCKET)
    # A late point in the same bucket (a restored backup, a clock step) merges, weighted.
    store.write([("a", reading(T0 + 20, 60.0))], [], now=T0 + RAW_KEEP + BUCKET)
    (b,) = store.buckets("a")
    assert (b.n, b.percent, b.percent_max) == (3, 30.0, 60.0)


def test_bounded_per_server(tmp_path: Path) -> None:
    """Two days at one point every 10 s: at most 24 h raw and the rest in buckets."""
    store = HistoryStore.open(str(tmp_path / "h.sqlite"))
    step = 10
    day = 24 * 3600
    for hour in range(48):
        start = T0 + hour * 3600
        points = [("a", reading(start + i * step, 50.0)) for i in range(3600 // step)]
        store.write(points, [], now=start + 3600)
    raw, buckets = store.counts()
    assert raw <= RAW_KEEP // step + BUCKET // step
    assert buckets == (2 * day - raw * step) // BUCKET
    assert all(b.n == BUCKET // step for b in store.buckets("a"))


def test_no_figure_is_not_history(tmp_path: Path) -> None:
    store = HistoryStore.open(str(tmp_path / "h.sqlite"))
    store.write([("a", Reading(T0, None, None, None, None))], [], now=T0)
    assert store.counts() == (0, 0)


def test_latest_and_replay_timestamps_survive_a_restart(tmp_path: Path) -> None:
    path = str(tmp_path / "h.sqlite")
    store = HistoryStore.open(path)
    r = Reading(T0 + 5.5, 37.0, 370, 365, 1000, degraded=True)
    store.write([("a", r)], [("a", Latest(r, T0 + 5))], now=T0 + 6)
    store.write([], [("b", Latest(Reading(T0, None, None, None, None), T0))], now=T0 + 6)
    store.close()
    again = HistoryStore.open(path)
    assert again.latest() == {
        "a": Latest(r, T0 + 5),
        "b": Latest(Reading(T0, None, None, None, None), T0),
    }
    assert again.raw_since(T0) == {"a": [(T0 + 5, 37.0)]}
    assert again._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


WRITER = """
import sys, time
from nodeagent.central.collector.store import HistoryStore, Latest
from nodeagent.central.collector.document import Reading
store = HistoryStore.open(sys.argv[1])
t = 1_800_000_000
batch = 0
print("ready", flush=True)
while True:
    rows = [(f"n{i}", Reading(t + batch * 10, float(batch % 100), 1, 1, 1)) for i in range(500)]
    latest = [(n, Latest(r, int(r.at))) for n, r in rows]
    store.write(rows, latest, now=t + batch * 10)
    batch += 1
"""


def test_a_crash_mid_write_leaves_whole_transactions(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        deadline = time.monotonic() + 60
        # Killed while writing: wait until some batches committed, whatever the machine's speed.
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with sqlite3.connect(path) as c:
                    if c.execute("SELECT count(*) FROM raw").fetchone()[0] >= 2000:
                        break
            except sqlite3.OperationalError:
                pass
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    store = HistoryStore.open(str(path))
    assert store._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    raw, _ = store.counts()
    # Every batch is 500 rows in one transaction, with its 500 latest rows: never a part of one.
    assert raw > 0 and raw % 500 == 0
    newest = {x.push_ts for x in store.latest().values()}
    assert len(newest) == 1 and len(store.latest()) == 500
    assert max(ts for rows in store.raw_since(0).values() for ts, _ in rows) == newest.pop()
