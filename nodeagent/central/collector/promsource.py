"""``source: prometheus``: the agents' figures read from a Prometheus server's HTTP API.

A provider who already scrapes every agent's ``/metrics`` needs no second
pipeline: every ``interval`` the collector asks ``/api/v1/query`` for the
agents' published load series (one instant query) and takes each series'
``node`` label (``prometheus.node_label``, set per target in the scrape
configuration) as the node's name. The same query works against any store
with Prometheus' query API (Thanos, Mimir, VictoriaMetrics).

Parsing the answer is pure (:func:`parse_answer`); :class:`PrometheusPoller`
is the thin shell around it. A failed query is counted and logged by type
only, and the fleet keeps its figures until they go stale.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable

import aiohttp

from nodeagent.central.collector.config import PrometheusSource
from nodeagent.central.collector.document import Reading
from nodeagent.central.collector.fleet import Fleet

log = logging.getLogger(__name__)

__all__ = ["QUERY", "PrometheusPoller", "SourceError", "parse_answer"]

_METRICS = {
    "nodeagent_load_percent": "percent",
    "nodeagent_load_receive_bytes_per_second": "rx",
    "nodeagent_load_transmit_bytes_per_second": "tx",
    "nodeagent_load_capacity_bytes_per_second": "capacity",
}
_KIND_LABEL = "nodeagent_value"
# The figures, and when each server's load was last scraped: an instant query
# answers with the evaluation time, and a series may be minutes old within
# Prometheus' lookback (5 min): the sample's own time is what staleness needs.
# (``or`` matches label sets without the metric name: the timestamps get a
# label of their own so that they are not taken for the percentages.)
QUERY = (
    '{__name__=~"' + "|".join(sorted(_METRICS)) + '"} or '
    f'label_replace(timestamp(nodeagent_load_percent), "{_KIND_LABEL}", "timestamp", "", "")'
)
MAX_ANSWER = 32 << 20
TIMEOUT = 10.0


class SourceError(Exception):
    """The Prometheus server's answer is unusable; the message is a short code."""


def _value(sample: object) -> tuple[float, float]:
    if not (isinstance(sample, list) and len(sample) == 2):
        raise SourceError("bad_sample")
    at, text = sample
    try:
        t, v = float(at), float(text)
    except (TypeError, ValueError):
        raise SourceError("bad_sample") from None
    if not (math.isfinite(t) and math.isfinite(v)) or v < 0:
        raise SourceError("bad_sample")
    return t, v


def parse_answer(body: bytes, node_label: str) -> dict[str, Reading]:
    """The newest figures per node in an answer to :data:`QUERY`; SourceError if malformed.

    Rates come in bytes per second (as ``/metrics`` has them) and become bit/s.
    A node without a ``nodeagent_load_percent`` series has no figure; a figure's
    time is its sample's (the ``timestamp()`` part of the query) when given.
    """
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SourceError("not_json") from None
    if not isinstance(doc, dict) or doc.get("status") != "success":
        raise SourceError("not_success")
    data = doc.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        raise SourceError("not_a_vector")
    result = data.get("result")
    if not isinstance(result, list):
        raise SourceError("not_a_vector")
    figures: dict[str, dict[str, tuple[float, float]]] = {}
    for series in result:
        if not isinstance(series, dict) or not isinstance(series.get("metric"), dict):
            raise SourceError("bad_series")
        labels = series["metric"]
        if labels.get(_KIND_LABEL) == "timestamp":
            kind: str | None = "timestamp"
        else:
            kind = _METRICS.get(labels.get("__name__", ""))
        node = labels.get(node_label)
        if kind is None or not isinstance(node, str):
            continue
        figures.setdefault(node, {})[kind] = _value(series.get("value"))
    out: dict[str, Reading] = {}
    for node, f in figures.items():
        if "percent" not in f:
            continue

        def bits(kind: str, f: dict[str, tuple[float, float]] = f) -> int | None:
            return round(f[kind][1] * 8) if kind in f else None

        at, percent = f["percent"]
        if "timestamp" in f:
            at = f["timestamp"][1]
        out[node] = Reading(at, percent, bits("rx"), bits("tx"), bits("capacity"))
    return out


class PrometheusPoller:
    """Polls the Prometheus server every ``interval`` and hands the figures to the fleet."""

    def __init__(
        self,
        source: PrometheusSource,
        fleet: Fleet,
        *,
        on_error: Callable[[], object] = lambda: None,
    ) -> None:
        self.source = source
        self._fleet = fleet
        self._on_error = on_error
        self._failures = 0

    async def poll_once(self, session: aiohttp.ClientSession) -> int:
        """One query; returns how many configured nodes got a figure."""
        url = f"{self.source.url}/api/v1/query"
        async with session.get(url, params={"query": QUERY}) as resp:
            body = await resp.content.read(MAX_ANSWER + 1)
            if resp.status != 200 or len(body) > MAX_ANSWER:
                raise SourceError(f"status_{resp.status}")
        readings = parse_answer(body, self.source.node_label)
        names = self._fleet.names
        latest = self._fleet.latest()
        taken = 0
        for node, reading in readings.items():
            old = latest.get(node)
            if node in names and (old is None or reading.at > old.at):
                self._fleet.accept(node, reading)
                taken += 1
        return taken

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                try:
                    await self.poll_once(session)
                    if self._failures:
                        log.info("prometheus recovered after_failures=%d", self._failures)
                    self._failures = 0
                except (aiohttp.ClientError, TimeoutError, OSError, SourceError) as e:
                    self._failures += 1
                    self._on_error()
                    n = self._failures
                    if n & (n - 1) == 0:
                        reason = str(e) if isinstance(e, SourceError) else type(e).__name__
                        log.warning("prometheus query failed reason=%s consecutive=%d", reason, n)
                await asyncio.sleep(self.source.interval)
