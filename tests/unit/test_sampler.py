"""The sampler shell: counters are dated when they were read, not when the loop gets to them."""

from __future__ import annotations

import threading
from collections.abc import Collection

from nodeagent.config.agent import LoadConfig
from nodeagent.load.counters import LinkCounters
from nodeagent.load.sampler import LoadSampler


class Cpu:
    def percent(self) -> float:
        return 0.0


async def test_counters_are_dated_at_the_read_not_when_the_loop_resumes() -> None:
    """A loop busy for a while after the read (a large reconcile) must not skew the rate.

    A link moving 1,000,000 bytes/s is read at t=10 and t=20. Right after the
    second read, before the sample coroutine resumes, the loop runs a callback
    that moves the clock on by 5 s (as if it had been busy that long). Dated
    at the read, the rate is exactly 8 Mbit/s; dated at the resumption, it
    would be 10 MB over 15 s.
    """
    loop_thread = threading.get_ident()
    now = [0.0]
    second_read = [False]

    def clock() -> float:
        # After the second read the loop is busy for 5 s: only the loop thread sees that.
        # (A callback that moved a shared clock raced the worker thread's own clock read.)
        busy = second_read[0] and threading.get_ident() == loop_thread
        return now[0] + (5.0 if busy else 0.0)

    class Reader:
        def read(self, names: Collection[str]) -> dict[str, LinkCounters]:
            now[0] += 10.0
            second_read[0] = now[0] > 10.0
            return {"eth0": LinkCounters(2, int(now[0] * 1_000_000), 0)}

        def close(self) -> None:
            pass

    sampler = LoadSampler(
        LoadConfig(("eth0",), 10**9, 1.0, 60.0, 0.1),
        reader=Reader(),  # type: ignore[arg-type]
        cpu=Cpu(),  # type: ignore[arg-type]
        clock=clock,
    )
    await sampler.sample_once()
    report = await sampler.sample_once()
    assert report.rx_bps == 8_000_000, report
    assert clock() == 25.0  # the loop was busy until 25
    assert sampler.last_sample_at == 20.0
