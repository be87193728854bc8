"""One grid for the daemon's periodic checks, so that an idle daemon wakes once a tick.

The feed file's poll, the interfaces' presence check and the load sample each
run every second or so. An idle daemon's wake-up costs more than any of those
checks (a timer, a system call, a turn of the event loop: in a VM, a few
hundredths of a percent of a core for each wake-up a second), so each waits
for the next multiple of its interval on the event loop's clock
(``time.monotonic``; ``daemon.service.until_next_tick``), and the loop runs
all those due at one instant in one turn.
"""

from __future__ import annotations

import math

__all__ = ["next_tick"]


def next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now``: the same for every caller in a tick."""
    return (math.floor(now / interval) + 1) * interval
