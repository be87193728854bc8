"""A pushed status document checked against docs/status.md, and the figures kept from it.

Pure. A push whose signature is good may still carry a document that is not
one: the collector refuses it (400) and counts it, and keeps its last good
figure. Only the aggregate load figures are kept; nothing else in the
document is stored or shown.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

__all__ = ["BadDocument", "Reading", "parse_document"]

_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_CODE = re.compile(r"[a-z0-9_]{1,64}")
_LOAD_KEYS = frozenset(
    {"percent", "link_percent", "cpu_percent", "rx_bps", "tx_bps", "capacity_bps", "window_seconds"}
)
_TOP_KEYS = frozenset({"node", "generated_at", "agent_version", "status", "problems", "load"})
MAX_PROBLEMS = 64
# A rate beyond 1 Pbit/s is not a server's uplink.
MAX_RATE = 10**15


class BadDocument(Exception):
    """The body is not a status document of the node that signed it; ``code`` is short and fixed."""

    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


@dataclass(frozen=True, slots=True)
class Reading:
    """One server's published load at one time: aggregates only.

    ``percent`` is None while the agent has no load figure yet (``load_no_data``).
    """

    at: float
    percent: float | None
    rx_bps: int | None
    tx_bps: int | None
    capacity_bps: int | None
    degraded: bool = False


def _figure(load: dict[str, object], key: str, *, integral: bool) -> float | None:
    value = load[key]
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadDocument(f"load_{key}_not_a_number")
    if integral and not isinstance(value, int):
        raise BadDocument(f"load_{key}_not_an_integer")
    if not math.isfinite(value) or value < 0 or value > MAX_RATE:
        raise BadDocument(f"load_{key}_out_of_range")
    return float(value)


def _rate(load: dict[str, object], key: str) -> int | None:
    value = _figure(load, key, integral=True)
    return None if value is None else int(value)


def parse_document(body: bytes, node: str, at: float) -> Reading:
    """The figures of ``body``, which must be a status document of ``node``; else BadDocument."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadDocument("not_json") from None
    if not isinstance(doc, dict):
        raise BadDocument("not_an_object")
    if not _TOP_KEYS.issuperset(doc) or not {"node", "generated_at", "status", "load"} <= set(doc):
        raise BadDocument("wrong_keys")
    if doc["node"] != node:
        raise BadDocument("node_mismatch")
    if not isinstance(doc["generated_at"], str) or not _TIME.fullmatch(doc["generated_at"]):
        raise BadDocument("bad_generated_at")
    version = doc.get("agent_version", "")
    if not isinstance(version, str) or len(version) > 64:
        raise BadDocument("bad_agent_version")
    status = doc["status"]
    problems = doc.get("problems")
    if status == "ok":
        if problems is not None:
            raise BadDocument("problems_without_degraded")
    elif status == "degraded":
        if (
            not isinstance(problems, list)
            or not 0 < len(problems) <= MAX_PROBLEMS
            or not all(isinstance(p, str) and _CODE.fullmatch(p) for p in problems)
        ):
            raise BadDocument("bad_problems")
    else:
        raise BadDocument("bad_status")
    load = doc["load"]
    if not isinstance(load, dict) or set(load) != _LOAD_KEYS:
        raise BadDocument("bad_load")
    percent = _figure(load, "percent", integral=False)
    for key in ("link_percent", "cpu_percent", "window_seconds"):
        _figure(load, key, integral=False)
    return Reading(
        at=at,
        percent=percent,
        rx_bps=_rate(load, "rx_bps"),
        tx_bps=_rate(load, "tx_bps"),
        capacity_bps=_rate(load, "capacity_bps"),
        degraded=status == "degraded",
    )
