"""The demo's terminal summary, drawn from a snapshot of figures: pure, no I/O.

:func:`figures_from_api` turns the collector's ``/api/v1/servers`` document
into rows; :func:`render` draws the block the terminal redraws in place, and
:func:`render_line` the one line a log gets instead. Servers' totals only:
the collector's figures never name a customer, and the feed's events are
written by the demo without keys, addresses or usernames.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

EVENTS_SHOWN = 5
BAR = 10


@dataclass(frozen=True)
class ServerFigures:
    """One server as the collector shows it (``None``: no figure yet)."""

    name: str
    kind: str
    online: bool = False
    load_percent: float | None = None
    rx_bps: int | None = None
    tx_bps: int | None = None
    capacity_bps: int | None = None

    @property
    def uplink_percent(self) -> float | None:
        """The busier direction's share of the uplink (the load is this or the CPU, if busier)."""
        if self.capacity_bps is None or self.capacity_bps <= 0:
            return None
        return 100.0 * max(self.rx_bps or 0, self.tx_bps or 0) / self.capacity_bps


@dataclass(frozen=True)
class Event:
    """Something the demo did, ``at`` seconds into the run."""

    at: float
    text: str


@dataclass(frozen=True)
class Snapshot:
    """Everything one redraw shows."""

    url: str
    elapsed: float
    duration: float | None  # None: until Ctrl+C
    servers: tuple[ServerFigures, ...]
    events: tuple[Event, ...] = ()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def figures_from_api(doc: object, kinds: Mapping[str, str]) -> tuple[ServerFigures, ...]:
    """Rows for the servers in ``kinds`` (name to VPN kind), in that order.

    A server missing from ``doc``, or a ``doc`` that is not the collector's
    answer (``None`` when it could not be read), gives an offline row.
    """
    listed: dict[str, Mapping[str, object]] = {}
    servers = doc.get("servers") if isinstance(doc, Mapping) else None
    for s in servers if isinstance(servers, list) else []:
        if isinstance(s, Mapping) and isinstance(s.get("name"), str):
            listed[str(s["name"])] = s
    rows = []
    for name, kind in kinds.items():
        s = listed.get(name, {})
        rx, tx, cap = (_number(s.get(k)) for k in ("rx_bps", "tx_bps", "capacity_bps"))
        rows.append(
            ServerFigures(
                name=name,
                kind=kind,
                online=s.get("online") is True,
                load_percent=_number(s.get("load_percent")),
                rx_bps=None if rx is None else int(rx),
                tx_bps=None if tx is None else int(tx),
                capacity_bps=None if cap is None else int(cap),
            )
        )
    return tuple(rows)


def clock(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on)."""
    s = max(int(seconds), 0)
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def mbit(bps: int | None) -> str:
    return "-" if bps is None else f"{bps / 1e6:.1f}"


def bar(fraction: float, width: int = BAR) -> str:
    """``[####------]``: ``fraction`` (clamped to 0..1) of ``width`` cells filled."""
    filled = round(min(max(fraction, 0.0), 1.0) * width)
    return "[" + "#" * filled + "-" * (width - filled) + "]"


def progress(elapsed: float, duration: float | None, width: int = 30) -> str:
    if duration is None:
        return f"running {clock(elapsed)}  (Ctrl+C stops the demo and removes what it made)"
    frac = elapsed / duration if duration > 0 else 1.0
    return f"{bar(frac, width)} {clock(elapsed)} / {clock(duration)}  (Ctrl+C stops it early)"


def _percent(value: float | None, with_bar: bool = False) -> str:
    if value is None:
        return f"{'-':>4}" + (" " * (BAR + 3) if with_bar else "")
    return f"{value:>3.0f}%" + (f" {bar(value / 100)}" if with_bar else "")


def render(snap: Snapshot, width: int = 80) -> list[str]:
    """The block redrawn in place on a terminal, each line at most ``width`` wide."""
    lines = [
        f"nodeagent demo - public status page: {snap.url}",
        progress(snap.elapsed, snap.duration),
        "",
        f"{'server':<12} {'VPN':<10} {'online':<7} {'load':<{BAR + 7}} {'uplink':>6}  "
        f"{'in Mbit/s':>9}  {'out Mbit/s':>10}",
    ]
    for s in snap.servers:
        live = s if s.online else ServerFigures(s.name, s.kind)
        lines.append(
            f"{s.name:<12} {s.kind:<10} {'yes' if s.online else 'no':<7} "
            f"{_percent(live.load_percent, True)} {_percent(live.uplink_percent):>6}  "
            f"{mbit(live.rx_bps):>9}  {mbit(live.tx_bps):>10}"
        )
    lines.append("(load: the busier of uplink and CPU, as published; the servers share one CPU)")
    lines += ["", "feed and customers (newest last):"]
    shown = snap.events[-EVENTS_SHOWN:]
    lines += [f"  {clock(e.at):>5}  {e.text}" for e in shown] or ["  (nothing yet)"]
    lines += [""] * (EVENTS_SHOWN - max(len(shown), 1))  # the same height at every redraw
    return [line[:width].rstrip() for line in lines]


def render_line(snap: Snapshot) -> str:
    """One line for a log: elapsed time and each server's load and rates."""
    when = clock(snap.elapsed) + (f"/{clock(snap.duration)}" if snap.duration else "")
    parts = []
    for s in snap.servers:
        if not s.online:
            parts.append(f"{s.name} offline")
            continue
        load, uplink = _percent(s.load_percent).strip(), _percent(s.uplink_percent).strip()
        parts.append(
            f"{s.name} load {load} uplink {uplink} in {mbit(s.rx_bps)} out {mbit(s.tx_bps)} Mbit/s"
        )
    return f"[{when}] " + " | ".join(parts)
