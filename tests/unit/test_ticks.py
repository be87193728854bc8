"""The periodic checks' grid: the next multiple of an interval, and one wake-up a tick."""

from __future__ import annotations

import asyncio
import selectors
from typing import Any

import pytest

from nodeagent.core.ticks import next_tick
from nodeagent.daemon.service import until_next_tick


@pytest.mark.parametrize(
    ("now", "interval", "tick"),
    [(0.0, 1.0, 1.0), (0.2, 1.0, 1.0), (1.0, 1.0, 2.0), (1234.999, 1.0, 1235.0), (7.0, 5.0, 10.0)],
)
def test_next_tick_is_the_first_multiple_after(now: float, interval: float, tick: float) -> None:
    assert next_tick(now, interval) == tick


class CountingSelector(selectors.DefaultSelector):
    """Counts the waits that block: one for each wake-up of an idle loop."""

    def __init__(self) -> None:
        super().__init__()
        self.waits = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None or timeout > 0:
            self.waits += 1
        return super().select(timeout)


def test_checks_started_apart_wake_the_loop_once_a_tick() -> None:
    """Three periodic tasks, started 30 ms apart just after a tick, wake together from then on."""
    selector = CountingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    woke: list[list[float]] = [[], [], []]
    interval = 0.5  # far more than the 60 ms of starts: all begin within one tick

    async def check(i: int) -> None:
        await asyncio.sleep(0.03 * i)
        for _ in range(3):
            await until_next_tick(interval)
            woke[i].append(loop.time())

    async def main() -> None:
        await until_next_tick(interval)
        await asyncio.gather(*(check(i) for i in range(3)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    # A wait for the first tick, two for the staggered starts, then one a tick: each
    # round's three checks run in one turn of the loop.
    assert selector.waits == 1 + 2 + 3
    for rounds in zip(*woke, strict=True):
        assert max(rounds) - min(rounds) < 0.005
