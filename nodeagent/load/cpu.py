"""Whole-machine CPU use from psutil, as the busy share between two readings.

The module-level ``psutil.cpu_percent()`` keeps one hidden "previous reading"
for the whole process, so two callers would steal each other's intervals;
:class:`CpuMeter` keeps its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["CpuMeter", "busy_percent"]

# iowait is idle time spent waiting; guest and guest_nice are already counted in
# user and nice on Linux, so adding them would count them twice.
_IDLE_FIELDS = ("idle", "iowait")
_NOT_IN_TOTAL = ("guest", "guest_nice")


def _split(times: Any) -> tuple[float, float]:
    """(total, idle) seconds of a psutil ``scputimes``."""
    fields: dict[str, float] = times._asdict()
    total = sum(v for k, v in fields.items() if k not in _NOT_IN_TOTAL)
    idle = sum(fields.get(k, 0.0) for k in _IDLE_FIELDS)
    return total, idle


def busy_percent(previous: Any, current: Any) -> float | None:
    """Percent of CPU time not idle between two ``psutil.cpu_times()`` readings.

    Steal time counts as busy: a CPU the hypervisor took is not free for
    encryption either. None when no time passed or the counters went backwards.
    """
    total0, idle0 = _split(previous)
    total1, idle1 = _split(current)
    total = total1 - total0
    idle = idle1 - idle0
    if total <= 0 or idle < 0:
        return None
    return min(max((total - idle) / total * 100, 0.0), 100.0)


class CpuMeter:
    """Busy percent of all CPUs since the previous call."""

    def __init__(self, cpu_times: Callable[[], Any] = psutil.cpu_times) -> None:
        self._cpu_times = cpu_times
        self._previous = cpu_times()

    def percent(self) -> float | None:
        """Busy percent since the last call (or since construction); None if unmeasurable."""
        current = self._cpu_times()
        previous, self._previous = self._previous, current
        return busy_percent(previous, current)
