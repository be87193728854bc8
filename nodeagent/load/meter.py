"""The load meter: counter samples in, one coarsened load figure out. Pure: no I/O, no clock.

Each :class:`Sample` carries a monotonic time, the byte counters of every
configured uplink and the CPU's busy share since the previous sample. The
meter turns consecutive samples into per-interval byte counts, keeps the
intervals of the last ``window`` seconds, and reports their average.

Counters are only trusted between two samples of the same link: when the
ifindex changes (the link was deleted and re-created) or a counter goes
backwards (a driver reset), that interval is dropped for that link, and the
new reading becomes the baseline. The average is taken over the time that
was measured, so a dropped interval neither pulls the figure down nor shows
as a spike.

Published figures are coarse on purpose (README, "Privacy"): the
rx/tx rates are rounded to ``resolution_percent`` of capacity and the link
percentage is derived from those rounded rates, so the two always agree and
neither can follow one customer's traffic on a quiet server.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodeagent.load.counters import LinkCounters

if TYPE_CHECKING:
    from nodeagent.config.agent import LoadConfig

__all__ = [
    "PROBLEM_CAPACITY_UNKNOWN",
    "PROBLEM_COUNTERS_UNREADABLE",
    "PROBLEM_CPU_UNKNOWN",
    "PROBLEM_INTERFACE_MISSING",
    "PROBLEM_NO_DATA",
    "LoadReport",
    "Meter",
    "MeterConfig",
    "Sample",
    "coarsen",
]

PROBLEM_INTERFACE_MISSING = "load_interface_missing"
PROBLEM_CAPACITY_UNKNOWN = "load_capacity_unknown"
PROBLEM_NO_DATA = "load_no_data"
PROBLEM_CPU_UNKNOWN = "cpu_unknown"
PROBLEM_COUNTERS_UNREADABLE = "load_counters_unreadable"


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """What the meter needs from ``load:``; ``capacity_bps`` None means the links' speed."""

    interfaces: tuple[str, ...]
    capacity_bps: int | None
    window: float
    resolution_percent: float

    @classmethod
    def from_load(cls, load: LoadConfig) -> MeterConfig:
        return cls(load.interfaces, load.capacity_bps, load.window, load.resolution_percent)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading. ``links`` maps each configured interface to its counters, None if absent.

    ``counters_ok`` False means the kernel could not be asked at all (then
    ``links`` is ignored). ``speeds_bps`` is only read when capacity is auto.
    """

    time: float
    links: Mapping[str, LinkCounters | None]
    cpu_percent: float | None
    speeds_bps: Mapping[str, int | None] = field(default_factory=dict)
    counters_ok: bool = True


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The published load figures. None means unknown (rendered as JSON null).

    Percentages are multiples of ``resolution_percent``; ``rx_bps``/``tx_bps``
    are multiples of ``resolution_percent`` of ``capacity_bps``.
    """

    percent: float | None
    link_percent: float | None
    cpu_percent: float | None
    rx_bps: int | None
    tx_bps: int | None
    capacity_bps: int | None
    window_seconds: float
    problems: tuple[str, ...] = ()

    @property
    def status(self) -> str:
        return "degraded" if self.problems else "ok"


@dataclass(frozen=True, slots=True)
class _Interval:
    """Bytes moved during (end - dt, end]."""

    end: float
    dt: float
    rx: int
    tx: int


@dataclass(frozen=True, slots=True)
class _CpuInterval:
    end: float
    dt: float
    percent: float


def _round_half_up(x: float) -> int:
    # Python's round() rounds half to even: 2.5 -> 2 but 3.5 -> 4, an uneven step.
    return math.floor(x + 0.5)


def _clean(x: float) -> float:
    """Drop float noise such as 3 * 0.1 = 0.30000000000000004."""
    return round(x, 6)


def coarsen(
    rx_bps: float, tx_bps: float, capacity_bps: int, resolution_percent: float
) -> tuple[int, int, float]:
    """Rates rounded to steps of ``resolution_percent`` of capacity, and the link percentage.

    The percentage is the larger rounded rate over capacity, computed in steps,
    so it is exactly a multiple of ``resolution_percent`` and consistent with
    the published rates.
    """
    step = capacity_bps * resolution_percent / 100
    rx_steps = _round_half_up(rx_bps / step)
    tx_steps = _round_half_up(tx_bps / step)
    link_percent = _clean(max(rx_steps, tx_steps) * resolution_percent)
    return round(rx_steps * step), round(tx_steps * step), link_percent


def _windowed_rate(
    entries: deque[_Interval], start: float, end: float
) -> tuple[float, float, float]:
    """(rx bytes, tx bytes, seconds covered) of ``entries`` clipped to (start, end]."""
    rx = tx = covered = 0.0
    for e in entries:
        overlap = min(e.end, end) - max(e.end - e.dt, start)
        if overlap <= 0:
            continue
        share = overlap / e.dt
        rx += e.rx * share
        tx += e.tx * share
        covered += overlap
    return rx, tx, covered


class Meter:
    """Averages counter samples over a sliding window. Deterministic; feed it with :meth:`add`."""

    def __init__(self, config: MeterConfig) -> None:
        if config.window <= 0 or not 0 < config.resolution_percent <= 100:
            raise ValueError("window must be positive and resolution_percent in (0, 100]")
        self.config = config
        self._last_time: float | None = None
        # Each link's latest reading and its time: a sample whose dump failed
        # must not shorten the next interval of a link that was not read.
        self._last: dict[str, tuple[float, LinkCounters]] = {}
        self._links: dict[str, deque[_Interval]] = {name: deque() for name in config.interfaces}
        self._cpu: deque[_CpuInterval] = deque()
        self._report = LoadReport(
            None, None, None, None, None, config.capacity_bps, config.window, (PROBLEM_NO_DATA,)
        )

    @property
    def report(self) -> LoadReport:
        """The report made by the latest :meth:`add`."""
        return self._report

    def add(self, sample: Sample) -> LoadReport:
        """Take one sample and return the report as of its time.

        A sample not later than the previous one is ignored (the previous
        report is returned): a monotonic clock never does that, a bug might.
        """
        now = sample.time
        if self._last_time is not None and now <= self._last_time:
            return self._report
        problems: list[str] = []
        if not sample.counters_ok:
            problems.append(PROBLEM_COUNTERS_UNREADABLE)
        else:
            self._take_links(sample, problems)
        first = self._last_time is None
        if self._last_time is not None and sample.cpu_percent is not None:
            dt = now - self._last_time
            self._cpu.append(_CpuInterval(now, dt, min(max(sample.cpu_percent, 0.0), 100.0)))
        self._last_time = now
        self._expire(now)
        if sample.cpu_percent is None and not first:
            problems.append(PROBLEM_CPU_UNKNOWN)
        self._report = self._make_report(sample, problems)
        return self._report

    def _take_links(self, sample: Sample, problems: list[str]) -> None:
        for name in self.config.interfaces:
            current = sample.links.get(name)
            if current is None:
                if PROBLEM_INTERFACE_MISSING not in problems:
                    problems.append(PROBLEM_INTERFACE_MISSING)
                # A link that is gone carries no traffic; its history goes with it,
                # so an old average does not linger while it is away.
                self._last.pop(name, None)
                self._links[name].clear()
                continue
            last = self._last.get(name)
            self._last[name] = (sample.time, current)
            if last is None:
                continue  # the first reading of a link is only a baseline
            then, previous = last
            if current.ifindex != previous.ifindex:
                continue  # re-created: its counters started again from zero
            rx = current.rx_bytes - previous.rx_bytes
            tx = current.tx_bytes - previous.tx_bytes
            if rx < 0 or tx < 0:
                continue  # reset in place: what moved since is unknown, leave it out
            self._links[name].append(_Interval(sample.time, sample.time - then, rx, tx))

    def _expire(self, now: float) -> None:
        start = now - self.config.window
        for entries in self._links.values():
            while entries and entries[0].end <= start:
                entries.popleft()
        while self._cpu and self._cpu[0].end <= start:
            self._cpu.popleft()

    def _capacity(self, sample: Sample) -> int | None:
        if self.config.capacity_bps is not None:
            return self.config.capacity_bps
        total = 0
        for name in self.config.interfaces:
            if sample.links.get(name) is None:
                continue
            speed = sample.speeds_bps.get(name)
            if speed is None or speed <= 0:
                return None
            total += speed
        return total or None

    def _make_report(self, sample: Sample, problems: list[str]) -> LoadReport:
        now = sample.time
        start = now - self.config.window
        res = self.config.resolution_percent

        cpu_weighted = cpu_covered = 0.0
        for c in self._cpu:
            overlap = min(c.end, now) - max(c.end - c.dt, start)
            if overlap > 0:
                cpu_weighted += c.percent * overlap
                cpu_covered += overlap
        cpu: float | None = None
        if cpu_covered > 0:
            cpu = _clean(_round_half_up(cpu_weighted / cpu_covered / res) * res)

        rx_rate = tx_rate = 0.0
        measured = False
        for entries in self._links.values():
            rx, tx, covered = _windowed_rate(entries, start, now)
            if covered > 0:
                rx_rate += rx * 8 / covered
                tx_rate += tx * 8 / covered
                measured = True

        capacity = self._capacity(sample)
        rx_bps: int | None = None
        tx_bps: int | None = None
        link: float | None = None
        if not measured:
            if not {PROBLEM_INTERFACE_MISSING, PROBLEM_COUNTERS_UNREADABLE} & set(problems):
                problems.append(PROBLEM_NO_DATA)
        elif capacity is None:
            # Without a capacity there is no step to round to: publish nothing
            # rather than an exact rate.
            problems.append(PROBLEM_CAPACITY_UNKNOWN)
        else:
            rx_bps, tx_bps, link = coarsen(rx_rate, tx_rate, capacity, res)

        known = [p for p in (link, cpu) if p is not None]
        return LoadReport(
            percent=max(known) if known else None,
            link_percent=link,
            cpu_percent=cpu,
            rx_bps=rx_bps,
            tx_bps=tx_bps,
            capacity_bps=capacity,
            window_seconds=self.config.window,
            problems=tuple(problems),
        )
