"""The status document (docs/status.md): what ``/status`` serves and push sends.

Pure: the caller passes the time and the load report. The document holds the
node's name, the agent's version and aggregate load figures only; nothing in
it is about a user.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from nodeagent.load.meter import PROBLEM_NO_DATA, LoadReport

__all__ = ["StatusBoard", "encode", "status_document"]


def _number(x: float | None) -> int | float | None:
    """An integral float as int, so that 37.0 is served as 37."""
    if x is None:
        return None
    return int(x) if float(x).is_integer() else x


def _timestamp(t: datetime) -> str:
    # Whole seconds: the document says when the figure was made, no finer.
    return t.astimezone(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_document(
    node: str,
    agent_version: str,
    generated_at: datetime,
    report: LoadReport | None,
    problems: Iterable[str] = (),
) -> dict[str, object]:
    """The status document. ``problems`` adds the agent's own codes to the load's.

    ``status`` is ``ok`` without problems and ``degraded`` with them, and then
    the document carries a sorted, de-duplicated ``problems`` list. Without a
    report yet the load figures are null.
    """
    codes = set(problems)
    doc: dict[str, object] = {
        "node": node,
        "generated_at": _timestamp(generated_at),
        "agent_version": agent_version,
    }
    if report is None:
        codes.add(PROBLEM_NO_DATA)
        load: dict[str, object] = {
            "percent": None,
            "link_percent": None,
            "cpu_percent": None,
            "rx_bps": None,
            "tx_bps": None,
            "capacity_bps": None,
            "window_seconds": None,
        }
    else:
        codes.update(report.problems)
        load = {
            "percent": _number(report.percent),
            "link_percent": _number(report.link_percent),
            "cpu_percent": _number(report.cpu_percent),
            "rx_bps": report.rx_bps,
            "tx_bps": report.tx_bps,
            "capacity_bps": report.capacity_bps,
            "window_seconds": _number(report.window_seconds),
        }
    doc["status"] = "degraded" if codes else "ok"
    if codes:
        doc["problems"] = sorted(codes)
    doc["load"] = load
    return doc


def encode(doc: dict[str, object]) -> bytes:
    """The document as compact UTF-8 JSON: the exact bytes served and signed."""
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


class StatusBoard:
    """The latest status document, encoded once per update and served as-is.

    ``/status`` and the push both read :attr:`body`, so a burst of requests
    costs no JSON encoding and the collector gets the same bytes a poller does.
    """

    def __init__(
        self,
        node: str,
        agent_version: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._node = node
        self._version = agent_version
        self._clock = clock
        self._report: LoadReport | None = None
        self._problems: tuple[str, ...] = ()
        self._watchers: list[Callable[[bytes], None]] = []
        self.body = encode(status_document(node, agent_version, clock(), None))

    def watch(self, watcher: Callable[[bytes], None]) -> None:
        """Call ``watcher`` with the body now and with each new one."""
        self._watchers.append(watcher)
        watcher(self.body)

    @property
    def node(self) -> str:
        return self._node

    def rename(self, node: str) -> bytes:
        """Publish under a new node name (a reload changed ``node.name``); the report stays."""
        self._node = node
        return self.update()

    def clear_report(self) -> bytes:
        """Drop the load report (a reload removed ``load``): no figure beats a stale one."""
        self._report = None
        return self.update()

    def update(
        self, report: LoadReport | None = None, problems: Iterable[str] | None = None
    ) -> bytes:
        """Re-render with a new report and/or new agent problems (None keeps the current one)."""
        if report is not None:
            self._report = report
        if problems is not None:
            self._problems = tuple(problems)
        doc = status_document(
            self._node, self._version, self._clock(), self._report, self._problems
        )
        self.body = encode(doc)
        for watcher in self._watchers:
            watcher(self.body)
        return self.body
