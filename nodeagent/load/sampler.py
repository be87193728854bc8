"""The load task: every ``sample_interval``, read counters and CPU, feed the meter, publish.

The thin shell around the pure meter. Counter reads are blocking netlink
calls and run in a worker thread; a failed read is counted and sampled as
"unreadable" (the status turns degraded), never fatal to the task.

A reload that changes the ``load`` section replaces the sampler; each failed
read is also reported to ``on_error``, so a count kept outside (a Prometheus
counter) outlives the sampler.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

from nodeagent.config.agent import LoadConfig
from nodeagent.core.ticks import next_tick
from nodeagent.load.counters import CounterError, LinkCounters, LinkReader, link_speed_bps
from nodeagent.load.cpu import CpuMeter
from nodeagent.load.meter import LoadReport, Meter, MeterConfig, Sample

log = logging.getLogger(__name__)

__all__ = ["LoadSampler"]


class LoadSampler:
    """Owns the meter and the latest raw readings (for ``/metrics``); run it as a task."""

    def __init__(
        self,
        config: LoadConfig,
        *,
        reader: LinkReader | None = None,
        cpu: CpuMeter | None = None,
        speed: Callable[[str], int | None] = link_speed_bps,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        on_report: Callable[[LoadReport], object] | None = None,
        on_error: Callable[[], object] | None = None,
    ) -> None:
        self.config = config
        self.meter = Meter(MeterConfig.from_load(config))
        self._reader = reader or LinkReader()
        self._cpu = cpu or CpuMeter()
        self._speed = speed
        self._clock = clock
        self._sleep = sleep
        self._on_report = on_report
        self.links: Mapping[str, LinkCounters] = {}
        self._on_error = on_error
        self.errors = 0  # samples whose counters could not be read
        self.last_sample_at: float | None = None

    def _read(self) -> tuple[float, dict[str, LinkCounters], dict[str, int | None]]:
        """(when the counters were read, the counters, the links' speeds), in a worker thread.

        The time is taken here, right after the dump, not when the event loop
        gets back to this sample: a loop busy with a large reconcile would
        otherwise date the counters late and skew the rate of two windows.
        """
        links = self._reader.read(self.config.interfaces)
        read_at = self._clock()
        speeds: dict[str, int | None] = {}
        if self.config.capacity_bps is None:
            # Re-read each time: a link can renegotiate its speed.
            speeds = {name: self._speed(name) for name in links}
        return read_at, links, speeds

    async def sample_once(self) -> LoadReport:
        """Take one sample now and return the meter's report."""
        ok = True
        links: dict[str, LinkCounters] = {}
        speeds: dict[str, int | None] = {}
        try:
            now, links, speeds = await asyncio.to_thread(self._read)
        except CounterError as e:
            ok = False
            self.errors += 1
            if self._on_error is not None:
                self._on_error()
            log.warning("load_sample failed reason=%s", e)
            now = self._clock()
        sample = Sample(
            time=now,
            links={name: links.get(name) for name in self.config.interfaces},
            cpu_percent=self._cpu.percent(),
            speeds_bps=speeds,
            counters_ok=ok,
        )
        if ok:
            self.links = links
        previous = self.meter.report.problems
        report = self.meter.add(sample)
        self.last_sample_at = now
        if report.problems != previous:
            log.info("load_status status=%s problems=%s", report.status, ",".join(report.problems))
        if self._on_report is not None:
            self._on_report(report)
        return report

    async def run(self) -> None:
        """Sample now, then at each multiple of the interval on the clock (``core.ticks``).

        A slow sample does not shift the next ones, and one that overran a
        tick (suspended, overloaded) waits for the next rather than bursting.
        """
        interval = self.config.sample_interval
        try:
            while True:
                await self.sample_once()
                now = self._clock()
                await self._sleep(next_tick(now, interval) - now)
        finally:
            self._reader.close()
