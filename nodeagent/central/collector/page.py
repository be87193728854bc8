"""The public status page: rows from a snapshot, sorted and filtered, rendered by Jinja2.

Pure apart from reading the templates. Complete without JavaScript: the sort
links and the country form are plain GET requests, and ``static/app.js`` only
re-sorts and refreshes in place. Everything visual that depends on a figure
is an SVG attribute or a class, never an inline style, so the page keeps a
strict Content-Security-Policy (``style-src 'self'``).

Load colours are the Okabe-Ito palette (safe for the common kinds of colour
blindness), and never alone: each bar carries its percentage in text and an
accessible name ("Server load is at 37 %").
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2

from nodeagent.central.collector.apis import iso
from nodeagent.central.collector.fleet import HISTORY_SPAN, HISTORY_STEP, Server, Snapshot

__all__ = ["FAIR_USE_BPS", "Query", "Row", "prepare", "render_page", "rows"]

# The provider's fair-use terms: a server with less than this to spare is not
# for large downloads or P2P. "To spare" is capacity minus the busier
# direction: what a new customer would actually get.
FAIR_USE_BPS = 50_000_000
SORTS = ("load", "name", "country")
ORDERS = ("asc", "desc")

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("nodeagent.central.collector", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True, slots=True)
class Query:
    """The page's parameters, normalized: anything unknown falls back to the default."""

    sort: str = "load"
    order: str = "asc"
    country: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str], countries: frozenset[str]) -> Query:
        sort = params.get("sort", "load")
        order = params.get("order", "asc")
        country = params.get("country", "").lower()
        return cls(
            sort if sort in SORTS else "load",
            order if order in ORDERS else "asc",
            country if country in countries else "",
        )

    def href(self, **change: str) -> str:
        values = {"sort": self.sort, "order": self.order, "country": self.country, **change}
        return "?" + "&".join(f"{k}={v}" for k, v in values.items() if v)


@dataclass(frozen=True, slots=True)
class Row:
    server: Server
    percent: int | None
    level: str
    rx_mbit: str
    tx_mbit: str
    capacity: str
    fair_use: bool
    spark: str
    spark_label: str


def _mbit(bps: int | None) -> str:
    if bps is None:
        return "—"
    return f"{bps / 1e6:.1f}" if bps < 10e6 else f"{bps / 1e6:.0f}"


def _capacity(bps: int | None) -> str:
    if bps is None:
        return "—"
    if bps >= 1e9 and bps % 100_000_000 == 0:
        return f"{bps / 1e9:g} Gbit/s"
    return f"{bps / 1e6:g} Mbit/s"


def _level(percent: int | None) -> str:
    if percent is None:
        return "none"
    return "low" if percent < 50 else "mid" if percent < 80 else "high"


def sparkline(history: tuple[tuple[int, float], ...], now: float) -> str:
    """An SVG path of the 24 h before ``now`` (x: a unit a step, y: 100 - percent); gaps stay.

    The window is aligned to the steps, so the path changes only with the
    history or at a step boundary (and a row can be reused until then).
    """
    start = (int(now) // HISTORY_STEP + 1) * HISTORY_STEP - HISTORY_SPAN
    parts: list[str] = []
    previous: int | None = None
    for at, percent in history:
        x = (at - start) // HISTORY_STEP
        if x < 0:
            continue
        y = 100 - round(min(100.0, max(0.0, percent)))
        parts.append(f"{'L' if previous is not None and x - previous == 1 else 'M'}{x} {y}")
        previous = x
    if len(parts) == 1:  # a lone point: a short dash, so it shows
        parts.append("h1")
    return "".join(parts)


def _spark_label(history: tuple[tuple[int, float], ...]) -> str:
    if not history:
        return "No load history for the last 24 hours"
    values = [p for _, p in history]
    return f"Load over the last 24 hours: lowest {min(values):.0f} %, highest {max(values):.0f} %"


def _row(s: Server, now: float) -> Row:
    percent = None if s.percent is None else round(s.percent)
    r = s.reading if s.online else None
    fair_use = False
    if r is not None and r.capacity_bps is not None:
        busier = max(r.rx_bps or 0, r.tx_bps or 0)
        fair_use = r.capacity_bps - busier < FAIR_USE_BPS
    return Row(
        server=s,
        percent=percent,
        level=_level(percent),
        rx_mbit=_mbit(r.rx_bps if r else None),
        tx_mbit=_mbit(r.tx_bps if r else None),
        capacity=_capacity(r.capacity_bps if r else None),
        fair_use=fair_use,
        spark=sparkline(s.history, now),
        spark_label=_spark_label(s.history),
    )


def _key(sort: str) -> Callable[[Row], tuple[Any, ...]]:
    if sort == "name":
        return lambda r: (r.server.config.name.lower(),)
    if sort == "country":
        return lambda r: (
            r.server.config.country.lower(),
            r.server.config.city.lower(),
            r.server.config.name.lower(),
        )
    # Load: servers without a figure after every one that has one, in either order.
    return lambda r: (r.percent is None, r.percent or 0, r.server.config.name.lower())


RowCache = dict[str, tuple[Hashable, Row]]


def _row_key(s: Server, now: float) -> Hashable:
    h = s.history
    # The history changes only at its ends: a new or growing last step, a pruned first one.
    return (s.config, s.online, s.reading, len(h), h[:1], h[-1:], int(now) // HISTORY_STEP)


def prepare(snapshot: Snapshot, cache: RowCache | None = None) -> tuple[Row, ...]:
    """Every server's row, unsorted: made once per snapshot, whatever the queries.

    With ``cache`` (kept by the caller across snapshots), a server whose row
    would not change keeps the one made before: between two snapshots of a
    large fleet most servers have sent nothing new.
    """
    rows = []
    for s in snapshot.servers:
        key = _row_key(s, snapshot.at)
        hit = cache.get(s.config.name) if cache is not None else None
        if hit is not None and hit[0] == key:
            rows.append(hit[1])
            continue
        row = _row(s, snapshot.at)
        if cache is not None:
            cache[s.config.name] = (key, row)
        rows.append(row)
    if cache is not None and len(cache) > len(rows):
        names = {s.config.name for s in snapshot.servers}
        for gone in [n for n in cache if n not in names]:
            del cache[gone]
    return tuple(rows)


def rows(snapshot: Snapshot, query: Query, prepared: tuple[Row, ...] | None = None) -> list[Row]:
    """The page's rows for ``query``: filtered by country, then sorted."""
    every = prepare(snapshot) if prepared is None else prepared
    out = [r for r in every if not query.country or r.server.config.country_code == query.country]
    key = _key(query.sort)
    out.sort(key=key, reverse=query.order == "desc")
    if query.sort == "load" and query.order == "desc":
        out.sort(key=lambda r: r.percent is None)  # stable: no-figure rows stay last
    return out


def render_page(
    snapshot: Snapshot,
    query: Query,
    assets: Mapping[str, str],
    refresh: int = 60,
    prepared: tuple[Row, ...] | None = None,
) -> str:
    """The whole page; ``assets`` maps a static file's name to its versioned URL.

    ``refresh``: seconds between the script's refreshes (0: never).
    """
    countries = sorted(
        {(s.config.country_code, s.config.country) for s in snapshot.servers},
        key=lambda c: c[1].lower(),
    )
    return _env.get_template("index.html.j2").render(
        rows=rows(snapshot, query, prepared),
        query=query,
        countries=countries,
        online=snapshot.online,
        total=len(snapshot.servers),
        updated=iso(snapshot.at),
        assets=assets,
        steps=HISTORY_SPAN // HISTORY_STEP,
        fair_use_mbit=FAIR_USE_BPS // 1_000_000,
        refresh=refresh,
    )
