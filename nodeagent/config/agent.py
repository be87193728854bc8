"""The agent's configuration schema: one builder per section of the file, and ``load_config``.

``load_config`` reads the whole file, checks every key and every referenced
file, and either returns a ``Config`` or raises one ``ConfigError`` listing
*all* problems, each as ``FILE:LINE: key.path: what is wrong``.

Each builder reads like the part of the file it checks. Beside it in
``nodeagent.config``: ``model``, the typed ``*Config`` dataclasses it builds;
``agentvalues``, the converters only this schema needs (names, addresses, URLs,
secret files); ``walker``, how a builder walks the YAML and reports problems
(``Map``, ``At``); ``values``, the plain converters; ``yamlfile``, reading the
file; ``secretfile``, reading secrets. The dataclasses, ``ConfigError``,
``Problem`` and the secret readers are re-exported here for the modules that
import them from this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from nodeagent.config import agentvalues as av
from nodeagent.config.model import (
    Config,
    FeedConfig,
    HTTPConfig,
    LoadConfig,
    LogConfig,
    OpenVPNInstanceConfig,
    PrivacyConfig,
    PushConfig,
    TLSConfig,
    WireguardConfig,
    WireguardInterfaceConfig,
)
from nodeagent.config.secretfile import read_private_key, read_secret
from nodeagent.config.units import parse_duration, parse_rate
from nodeagent.config.values import (
    boolean,
    choice,
    duration,
    existing_file,
    percent,
    port,
    size,
)
from nodeagent.config.walker import ConfigError, Map, Problem, distinct, list_of, section
from nodeagent.config.yamlfile import read_mapping
from nodeagent.core.names import uapi_socket_path

__all__ = [
    "Config",
    "ConfigError",
    "FeedConfig",
    "HTTPConfig",
    "LoadConfig",
    "LogConfig",
    "OpenVPNInstanceConfig",
    "PrivacyConfig",
    "Problem",
    "PushConfig",
    "TLSConfig",
    "WireguardConfig",
    "WireguardInterfaceConfig",
    "load_config",
    "parse_duration",
    "parse_rate",
    "read_private_key",
    "read_secret",
]

# WireGuard: a session in use re-handshakes every 120 s (REKEY_AFTER_TIME) and
# its keys die at 180 s (REJECT_AFTER_TIME). A peer silent for 180 s has no
# live session; scrubbing earlier would cut sessions that are in use.
MIN_SCRUB_IDLE_AFTER = 180.0
DEFAULT_HTTP_LISTEN = "127.0.0.1:9586"
MAX_CONFIG_BYTES = 1 << 20


def _node(m: Map) -> str:
    return m.require("name", av.node_name, "")


def _wireguard_interface(m: Map) -> WireguardInterfaceConfig:
    name = m.require("name", av.interface_name, "")
    backend: Literal["kernel", "userspace"] = m.get("backend", av.backend, "kernel")
    # uapi_socket only matters for userspace, and the key, port and addresses only
    # with create: true; elsewhere they are checked but unused (the example configuration's
    # lists them all on one interface).
    uapi_socket = m.get("uapi_socket", av.socket_path, uapi_socket_path(name))
    create = m.get("create", boolean, False)
    if create:
        key_file = m.require("private_key_file", av.private_key_file, None, by="create")
        listen_port = m.require("listen_port", port, None, by="create")
    else:
        key_file = m.get("private_key_file", av.private_key_file, None)
        listen_port = m.get("listen_port", port, None)
    addresses: tuple[str, ...] = m.get("addresses", list_of(av.ip_interface), ())
    return WireguardInterfaceConfig(
        name, backend, uapi_socket, create, key_file, listen_port, addresses
    )


def _wireguard(m: Map) -> WireguardConfig:
    interfaces = m.items("interfaces", section(_wireguard_interface))
    distinct(interfaces, lambda i: i.name, "name")
    distinct(interfaces, lambda i: i.listen_port, "listen_port")
    distinct(
        [(at, i) for at, i in interfaces if i.backend == "userspace"],
        lambda i: i.uapi_socket,
        "uapi_socket",
    )
    return WireguardConfig(
        interfaces=tuple(i for _, i in interfaces),
        resync_interval=m.get("resync_interval", duration, 60.0),
    )


def _feed(m: Map) -> FeedConfig:
    if m.has("url") and m.has("path"):
        m.problem("path", "give either url or path, not both")
    elif not (m.has("url") or m.has("path")):
        m.problem(None, "needs exactly one of url or path")
    url = m.get("url", av.http_url, None)
    path = m.get("path", av.feed_path, None)
    token_file: str | None = None
    ca_file: str | None = None
    if m.has("url"):
        token_file = m.get("token_file", av.secret_file, None)
        if url is None or url.startswith("https:"):
            ca_file = m.get("ca_file", existing_file, None)
        else:
            m.forbid("ca_file", "with an https url")
    else:
        m.forbid("token_file", "with url")
        m.forbid("ca_file", "with url")
    return FeedConfig(
        url=url,
        path=path,
        token_file=token_file,
        ca_file=ca_file,
        long_poll=m.get("long_poll", duration, 30.0),
        max_removal_ratio=m.get("max_removal_ratio", av.ratio, 0.5),
        max_bytes=m.get("max_bytes", size, 512 << 20),
    )


def _openvpn_instance(m: Map) -> OpenVPNInstanceConfig:
    return OpenVPNInstanceConfig(
        management=m.require("management", av.management, ""),
        interface=m.require("interface", av.interface_name, ""),
        password_file=m.get("password_file", av.secret_file, None),
    )


def _openvpn(m: Map) -> tuple[OpenVPNInstanceConfig, ...]:
    instances = m.items("instances", section(_openvpn_instance))
    distinct(instances, lambda i: i.management, "management")
    distinct(instances, lambda i: i.interface, "interface")
    return tuple(i for _, i in instances)


def _load(m: Map) -> LoadConfig:
    interfaces = m.items("interfaces", av.interface_name, required=True)
    # The same link twice would count its traffic twice.
    distinct(interfaces, lambda name: name)
    sample_interval = m.get("sample_interval", duration, 5.0)
    window = m.get("window", duration, 60.0)
    if window < sample_interval:
        m.problem("window", "must be at least sample_interval")
    return LoadConfig(
        interfaces=tuple(name for _, name in interfaces),
        capacity_bps=m.get("capacity", av.capacity, None),
        sample_interval=sample_interval,
        window=window,
        resolution_percent=m.get("resolution_percent", percent, 1.0),
    )


def _tls(m: Map) -> TLSConfig:
    return TLSConfig(
        cert_file=m.require("cert_file", existing_file, ""),
        key_file=m.require("key_file", av.secret_file, ""),
    )


def _http(m: Map) -> HTTPConfig:
    listen = m.items("listen", av.host_port, required=m.has("listen"))
    distinct(listen, lambda address: address)
    return HTTPConfig(
        listen=tuple(a for _, a in listen) if m.has("listen") else (DEFAULT_HTTP_LISTEN,),
        token_file=m.get("token_file", av.secret_file, None),
        tls=m.get("tls", section(_tls), None),
    )


def _push(m: Map) -> PushConfig:
    interval = m.get("interval", duration, 60.0)
    if interval < 1:
        # The collector refuses a timestamp (whole seconds) not newer than the last one.
        m.problem("interval", "must be at least 1s")
    return PushConfig(
        url=m.require("url", av.http_url, ""),
        secret_file=m.require("secret_file", av.secret_file, ""),
        interval=interval,
    )


def _privacy(m: Map) -> PrivacyConfig:
    idle = m.get("scrub_idle_after", duration, MIN_SCRUB_IDLE_AFTER)
    if idle < MIN_SCRUB_IDLE_AFTER:
        m.problem(
            "scrub_idle_after",
            "must be at least 180s: WireGuard re-handshakes a session in use every 120s and "
            "drops its keys at 180s, so a shorter threshold would cut live sessions",
        )
    return PrivacyConfig(
        scrub_idle_after=idle,
        scrub_interval=m.get("scrub_interval", duration, 30.0),
    )


def _log(m: Map) -> LogConfig:
    return LogConfig(
        level=m.get("level", choice("debug", "info", "warning", "error"), "info"),
        format=m.get("format", choice("text", "json"), "text"),
    )


_NO_FEED = FeedConfig(None, None, None, None, 30.0, 0.5, 512 << 20)


def _config(m: Map, path: str) -> Config:
    return Config(
        path=path,
        node_name=m.require("node", section(_node), ""),
        wireguard=m.section("wireguard", _wireguard),
        feed=m.require("feed", section(_feed), _NO_FEED),
        openvpn=m.get("openvpn", section(_openvpn), ()),
        load=m.get("load", section(_load), None),
        http=m.get("http", section(_http), None),
        push=m.get("push", section(_push), None),
        privacy=m.section("privacy", _privacy),
        log=m.section("log", _log),
    )


# --- entry point -----------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and check the configuration at ``path``; ``ConfigError`` lists every problem."""
    file = str(path)
    return read_mapping(path, lambda m: _config(m, file), max_bytes=MAX_CONFIG_BYTES)
