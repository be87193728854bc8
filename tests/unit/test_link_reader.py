"""LinkReader on a real rtnetlink socket: a close() under a read in flight must not hang it.

The sampler closes its reader when its task is cancelled (a reload, the agent
stopping) while the cancelled task's worker thread may still be inside the
dump. With pyroute2 0.9, closing the socket under a running call left that
thread waiting forever, and the agent could not exit. Needs no privileges:
it dumps this namespace's links.
"""

from __future__ import annotations

import threading
import time

from nodeagent.load.counters import LinkReader


def test_close_during_reads_never_strands_the_reading_thread() -> None:
    reader = LinkReader()
    stop = threading.Event()
    reads = [0]

    def keep_reading() -> None:
        while not stop.is_set():
            assert "lo" in reader.read(["lo"])
            reads[0] += 1

    thread = threading.Thread(target=keep_reading, daemon=True)
    thread.start()
    try:
        for trial in range(200):
            time.sleep(0.0005 * (trial % 7))
            reader.close()
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "a read never returned after close()"
    finally:
        stop.set()
    assert reads[0] > 0
    reader.close()
    assert reader._ipr is None  # nothing left open


def test_close_in_flight_is_done_by_the_read() -> None:
    """A close() that arrives during a read takes effect when that read returns."""
    reader = LinkReader()
    reader.read(["lo"])
    opened = reader._ipr
    assert opened is not None
    started, release = threading.Event(), threading.Event()
    real_get_links = opened.get_links

    def slow_get_links() -> object:
        started.set()
        release.wait(10)
        return real_get_links()

    opened.get_links = slow_get_links
    thread = threading.Thread(target=reader.read, args=(["lo"],), daemon=True)
    thread.start()
    assert started.wait(10)
    reader.close()
    assert reader._ipr is opened, "not closed under the read"
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert reader._ipr is None, "closed once the read returned"
    assert "lo" in reader.read(["lo"]), "a later read opens a fresh socket"
    reader.close()
