"""The public JSON APIs (docs/collector.md, docs/collector-api.yaml), made from a snapshot.

Pure. ``/api/traffic.json`` and ``/api/serverlocations.json`` keep the
provider's existing formats, which its apps already read: keys are host
names, bandwidths are kbit/s, and an offline server (or one without a
figure yet) has -1 in all three bandwidths. ``/api/v1/servers`` is the
collector's own, with the 24 h history.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from nodeagent.central.collector.fleet import Server, Snapshot

__all__ = ["encode", "iso", "server_locations", "servers", "traffic"]

Json = dict[str, object]


def iso(t: float) -> str:
    """Unix time as ``2026-11-21T12:00:00Z`` (whole seconds, UTC)."""
    return datetime.fromtimestamp(int(t), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def encode(doc: object) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _kbit(bps: int | None) -> int:
    return -1 if bps is None else round(bps / 1000)


def traffic(snapshot: Snapshot) -> Json:
    out: Json = {}
    for s in snapshot.servers:
        r = s.reading
        live = s.online and r is not None and r.percent is not None
        out[s.config.host] = {
            "timestamp": int(r.at if r is not None else snapshot.at),
            "bandwidth_in": _kbit(r.rx_bps) if live and r else -1,
            "bandwidth_out": _kbit(r.tx_bps) if live and r else -1,
            "bandwidth_max": _kbit(r.capacity_bps) if live and r else -1,
        }
    return out


def server_locations(snapshot: Snapshot) -> Json:
    return {
        s.config.host: {
            "city": s.config.city,
            "city_short": s.config.city_short,
            "country": s.config.country,
            "country_short": s.config.country_code.upper(),
            "lati": s.config.lati,
            "longi": s.config.longi,
        }
        for s in snapshot.servers
    }


def _server(s: Server) -> Json:
    r = s.reading if s.online else None
    return {
        "name": s.config.name,
        "host": s.config.host,
        "city": s.config.city,
        "country": s.config.country,
        "country_code": s.config.country_code,
        "online": s.online,
        "load_percent": s.percent,
        "rx_bps": r.rx_bps if r else None,
        "tx_bps": r.tx_bps if r else None,
        "capacity_bps": r.capacity_bps if r else None,
        "updated_at": iso(s.reading.at) if s.reading else None,
        "history": [[at, percent] for at, percent in s.history],
    }


def servers(snapshot: Snapshot) -> Json:
    return {"generated_at": iso(snapshot.at), "servers": [_server(s) for s in snapshot.servers]}
