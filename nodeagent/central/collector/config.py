"""The collector's configuration (docs/collector.md): ``collector:``, ``nodes:``, ``log:``.

Read with the agent's schema walker, so a problem is reported the same way
(``FILE:LINE: key.path: what is wrong``, all of them at once, exit 78 from
the CLI). Secret files are read while checking, so that an unreadable or
group-readable one is a configuration error, not a refused push later;
:func:`read_secrets` reads them again for the running collector.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

from nodeagent.config import agentvalues as av
from nodeagent.config.model import LogConfig
from nodeagent.config.secretfile import read_secret
from nodeagent.config.values import choice, duration, number, relative_path, string
from nodeagent.config.walker import At, ConfigError, Invalid, Map, Problem, distinct, section
from nodeagent.config.yamlfile import read_mapping

__all__ = [
    "CollectorConfig",
    "ConfigError",
    "NodeConfig",
    "Problem",
    "PrometheusSource",
    "load_collector_config",
    "read_secrets",
]

DEFAULT_LISTEN = "0.0.0.0:8600"
DEFAULT_DATABASE = "/var/lib/nodeagent-collector/history.sqlite"
MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One server of the fleet as the page and the public APIs show it."""

    name: str
    host: str
    city: str
    country: str
    country_code: str
    secret_file: str | None
    city_short: str
    lati: str
    longi: str


@dataclass(frozen=True, slots=True)
class PrometheusSource:
    """Where to read the agents' figures with ``source: prometheus``."""

    url: str
    interval: float
    node_label: str


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    path: str
    listen: tuple[str, ...]
    database: str
    stale_after: float
    source: Literal["push", "prometheus"]
    prometheus: PrometheusSource | None
    nodes: tuple[NodeConfig, ...]
    log: LogConfig = field(default_factory=lambda: LogConfig("info", "text"))

    def node(self, name: str) -> NodeConfig | None:
        for n in self.nodes:
            if n.name == name:
                return n
        return None


def _country_code(at: At) -> str:
    code = string(at)
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise Invalid("must be a two-letter country code (ISO 3166-1 alpha-2), as in nl")
    return code.lower()


def _coordinate(limit: float) -> Callable[[At], str]:
    def convert(at: At) -> str:
        value = number(at)
        if not -limit <= value <= limit:
            raise Invalid(f"{value:g} must be within -{limit:g}..{limit:g}")
        return f"{value:g}"

    return convert


_latitude = _coordinate(90.0)
_longitude = _coordinate(180.0)


def _database(at: At) -> str:
    path = relative_path(at)
    if not os.path.isdir(os.path.dirname(path)):
        raise Invalid(f"{os.path.dirname(path)}: No such directory")
    return path


def _node(source: str) -> Callable[[Map], NodeConfig]:
    def build(m: Map) -> NodeConfig:
        city = m.require("city", string, "")
        if source == "push":
            secret = m.require("secret_file", av.secret_file, "")
        else:
            m.forbid("secret_file", "with source: push")
            secret = None
        return NodeConfig(
            name=m.require("name", av.node_name, ""),
            host=m.require("host", string, ""),
            city=city,
            country=m.require("country", string, ""),
            country_code=m.require("country_code", _country_code, ""),
            secret_file=secret,
            city_short=m.get("city_short", string, city[:3].upper()),
            lati=m.get("lati", _latitude, ""),
            longi=m.get("longi", _longitude, ""),
        )

    return build


def _prometheus(m: Map) -> PrometheusSource:
    interval = m.get("interval", duration, 15.0)
    if interval < 1:
        m.problem("interval", "must be at least 1s")
    return PrometheusSource(
        url=m.require("url", av.http_url, "").rstrip("/"),
        interval=interval,
        node_label=m.get("node_label", av.node_name, "node"),
    )


@dataclass(frozen=True, slots=True)
class _Section:
    listen: tuple[str, ...]
    database: str
    stale_after: float
    source: Literal["push", "prometheus"]
    prometheus: PrometheusSource | None


def _collector(m: Map) -> _Section:
    listen = m.items("listen", av.host_port, required=m.has("listen"))
    distinct(listen, lambda address: address)
    stale_after = m.get("stale_after", duration, 180.0)
    if stale_after < 1:
        m.problem("stale_after", "must be at least 1s")
    source = cast(
        Literal["push", "prometheus"], m.get("source", choice("push", "prometheus"), "push")
    )
    if source == "prometheus":
        if not m.has("prometheus"):
            m.problem("prometheus", "is required with source: prometheus", line_of="source")
        prometheus = m.get("prometheus", section(_prometheus), None)
    else:
        m.forbid("prometheus", "with source: prometheus")
        prometheus = None
    return _Section(
        tuple(a for _, a in listen) if m.has("listen") else (DEFAULT_LISTEN,),
        m.get("database", _database, DEFAULT_DATABASE),
        stale_after,
        source,
        prometheus,
    )


def _log(m: Map) -> LogConfig:
    return LogConfig(
        level=m.get("level", choice("debug", "info", "warning", "error"), "info"),
        format=m.get("format", choice("text", "json"), "text"),
    )


_NO_COLLECTOR = _Section((DEFAULT_LISTEN,), DEFAULT_DATABASE, 180.0, "push", None)


def _config(m: Map, path: str) -> CollectorConfig:
    c = m.require("collector", section(_collector), _NO_COLLECTOR)
    nodes = m.items("nodes", section(_node(c.source)), required=True)
    distinct(nodes, lambda n: n.name, "name")
    distinct(nodes, lambda n: n.host, "host")
    return CollectorConfig(
        path=path,
        listen=c.listen,
        database=c.database,
        stale_after=c.stale_after,
        source=c.source,
        prometheus=c.prometheus,
        nodes=tuple(n for _, n in nodes),
        log=m.section("log", _log),
    )


def load_collector_config(path: str | Path) -> CollectorConfig:
    """Read and check the collector's configuration; ``ConfigError`` lists every problem."""
    file = str(path)
    return read_mapping(path, lambda m: _config(m, file), max_bytes=MAX_CONFIG_BYTES)


def read_secrets(config: CollectorConfig) -> dict[str, bytes]:
    """Each node's push secret, read now; ``OSError`` or ``ValueError`` as ``read_secret``."""
    return {n.name: read_secret(n.secret_file) for n in config.nodes if n.secret_file}
