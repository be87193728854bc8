"""The configuration file: YAML in, frozen dataclasses out.

``load_config`` reads the whole file, checks every key and every referenced
file, and either returns a ``Config`` or raises one ``ConfigError`` listing
*all* problems, each as ``FILE:LINE: key.path: what is wrong``.

This module is the schema: the dataclasses the agent is built from, the
converters that only make sense for it, and one builder per section, each
reading like the part of the file it checks. How a builder walks the YAML and
reports problems (``Map``, ``At``, the generic converters) is
``nodeagent.yamlschema``; secret files are read by ``nodeagent.secretfile``.
Both are re-exported here for the modules that import them from ``config``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast
from urllib.parse import urlsplit

from nodeagent.config.secretfile import read_private_key, read_secret
from nodeagent.config.units import parse_duration, parse_rate
from nodeagent.config.yamlschema import (
    At,
    ConfigError,
    Invalid,
    Map,
    Problem,
    boolean,
    checked_by,
    choice,
    distinct,
    duration,
    existing_file,
    list_of,
    number,
    percent,
    port,
    rate,
    read_mapping,
    relative_path,
    section,
    size,
    string,
)

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


# --- the result ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireguardInterfaceConfig:
    """One WireGuard interface the agent keeps in step with the feed."""

    name: str
    backend: Literal["kernel", "userspace"]
    uapi_socket: str
    create: bool
    private_key_file: str | None
    listen_port: int | None
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WireguardConfig:
    interfaces: tuple[WireguardInterfaceConfig, ...]
    resync_interval: float


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """Where desired state comes from: exactly one of ``url`` and ``path`` is set."""

    url: str | None
    path: str | None
    token_file: str | None
    ca_file: str | None
    long_poll: float
    max_removal_ratio: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class OpenVPNInstanceConfig:
    management: str
    interface: str


@dataclass(frozen=True, slots=True)
class LoadConfig:
    interfaces: tuple[str, ...]
    capacity_bps: int | None  # None: the link's reported speed ("auto")
    sample_interval: float
    window: float
    resolution_percent: float


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class HTTPConfig:
    listen: tuple[str, ...]
    token_file: str | None
    tls: TLSConfig | None


@dataclass(frozen=True, slots=True)
class PushConfig:
    url: str
    secret_file: str
    interval: float


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    scrub_idle_after: float
    scrub_interval: float


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. Durations are seconds, rates bits per second."""

    path: str
    node_name: str
    wireguard: WireguardConfig
    feed: FeedConfig
    openvpn: tuple[OpenVPNInstanceConfig, ...]
    load: LoadConfig | None
    http: HTTPConfig | None
    push: PushConfig | None
    privacy: PrivacyConfig
    log: LogConfig


# --- converters for what the agent configures: names, addresses, secrets --


def _capacity(at: At) -> int | None:
    return None if at.scalar() == "auto" else rate(at)


def _ratio(at: At) -> float:
    value = number(at)
    if not 0 < value <= 1:
        raise Invalid(f"{value:g} is not in (0, 1]; e.g. 0.5 refuses a feed that removes over half")
    return value


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _node_name(at: At) -> str:
    # It travels in an HTTP header and in URLs: keep it to hostname-like characters.
    name = string(at)
    if not _NODE_NAME.fullmatch(name):
        raise Invalid(
            "must be 1..63 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def _ifname(at: At) -> str:
    name = string(at)
    # IFNAMSIZ is 16 with the terminating NUL; the kernel's dev_valid_name() refuses the rest.
    if len(name) > 15:
        raise Invalid(f"{name} is longer than 15 characters, the kernel's limit")
    if any(c in "/:" or c.isspace() for c in name) or name in (".", ".."):
        raise Invalid(f"{name!r} is not an interface name: no '/', ':' or whitespace")
    return name


def _feed_path(at: At) -> str:
    # A missing feed file is a state, not a mistake: the agent starts fail-static
    # (leaves the kernel as it is) and applies the file once it appears. Its
    # directory must exist, though, or the file could never be watched for.
    path = relative_path(at)
    if not os.path.isdir(os.path.dirname(path)):
        raise Invalid(f"{os.path.dirname(path)}: No such directory")
    if os.path.lexists(path):
        return existing_file(at)
    return path


_secret_file = checked_by(read_secret)
_private_key_file = checked_by(read_private_key)


def _socket_path(at: At) -> str:
    path = string(at)
    if not path.startswith("/"):
        raise Invalid("must be an absolute path")
    return path


def _http_url(at: At) -> str:
    url = string(at)
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is not an IPv6 address, and the like
        raise Invalid("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise Invalid("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Invalid("must not contain credentials; put them in a token or secret file")
    return url


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _host_port(at: At) -> str:
    """``host:port``, ``1.2.3.4:port`` or ``[IPv6]:port``, returned as written."""
    text = string(at)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if sep != ":":
            raise Invalid(f"{text} needs a port, as in [::1]:9586")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{text} is not [IPv6 address]:port") from None
    elif ":" not in text:
        raise Invalid(f"{text} needs a port, as in 127.0.0.1:9586")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise Invalid(f"write IPv6 addresses in brackets, as in [{host}]:{port}")
        looks_numeric = bool(re.fullmatch(r"[\d.]+", host))
        if looks_numeric:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise Invalid(f"{host} is not an IPv4 address") from None
        elif not _HOSTNAME.fullmatch(host):
            raise Invalid(f"{text} is not host:port")
    # isascii: str.isdigit() also accepts digits such as "²", which int() refuses.
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise Invalid(f"{text} needs a port 1..65535, as in 127.0.0.1:9586 or [::1]:9586")
    return text


def _ip_interface(at: At) -> str:
    """An address with a prefix length (``10.8.0.1/16``), in its canonical form."""
    text = string(at)
    try:
        if "/" not in text:
            raise ValueError
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise Invalid(f"{text} is not an address with a prefix length, as in 10.8.0.1/16") from None


def _management(at: At) -> str:
    # OpenVPN's management interface listens on a unix socket or on TCP.
    text = string(at)
    return _socket_path(at) if "/" in text else _host_port(at)


def _backend(at: At) -> Literal["kernel", "userspace"]:
    return cast(Literal["kernel", "userspace"], choice("kernel", "userspace")(at))


# --- sections --------------------------------------------------------------


def _node(m: Map) -> str:
    return m.require("name", _node_name, "")


def _wireguard_interface(m: Map) -> WireguardInterfaceConfig:
    name = m.require("name", _ifname, "")
    backend: Literal["kernel", "userspace"] = m.get("backend", _backend, "kernel")
    # uapi_socket only matters for userspace, and the key, port and addresses only
    # with create: true; elsewhere they are checked but unused (the example configuration's
    # lists them all on one interface).
    uapi_socket = m.get("uapi_socket", _socket_path, f"/var/run/wireguard/{name}.sock")
    create = m.get("create", boolean, False)
    if create:
        key_file = m.require("private_key_file", _private_key_file, None, by="create")
        listen_port = m.require("listen_port", port, None, by="create")
    else:
        key_file = m.get("private_key_file", _private_key_file, None)
        listen_port = m.get("listen_port", port, None)
    addresses: tuple[str, ...] = m.get("addresses", list_of(_ip_interface), ())
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
    url = m.get("url", _http_url, None)
    path = m.get("path", _feed_path, None)
    token_file: str | None = None
    ca_file: str | None = None
    if m.has("url"):
        token_file = m.get("token_file", _secret_file, None)
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
        max_removal_ratio=m.get("max_removal_ratio", _ratio, 0.5),
        max_bytes=m.get("max_bytes", size, 512 << 20),
    )


def _openvpn_instance(m: Map) -> OpenVPNInstanceConfig:
    return OpenVPNInstanceConfig(
        management=m.require("management", _management, ""),
        interface=m.require("interface", _ifname, ""),
    )


def _openvpn(m: Map) -> tuple[OpenVPNInstanceConfig, ...]:
    instances = m.items("instances", section(_openvpn_instance))
    distinct(instances, lambda i: i.management, "management")
    distinct(instances, lambda i: i.interface, "interface")
    return tuple(i for _, i in instances)


def _load(m: Map) -> LoadConfig:
    interfaces = m.items("interfaces", _ifname, required=True)
    # The same link twice would count its traffic twice.
    distinct(interfaces, lambda name: name)
    sample_interval = m.get("sample_interval", duration, 5.0)
    window = m.get("window", duration, 60.0)
    if window < sample_interval:
        m.problem("window", "must be at least sample_interval")
    return LoadConfig(
        interfaces=tuple(name for _, name in interfaces),
        capacity_bps=m.get("capacity", _capacity, None),
        sample_interval=sample_interval,
        window=window,
        resolution_percent=m.get("resolution_percent", percent, 1.0),
    )


def _tls(m: Map) -> TLSConfig:
    return TLSConfig(
        cert_file=m.require("cert_file", existing_file, ""),
        key_file=m.require("key_file", _secret_file, ""),
    )


def _http(m: Map) -> HTTPConfig:
    listen = m.items("listen", _host_port, required=m.has("listen"))
    distinct(listen, lambda address: address)
    return HTTPConfig(
        listen=tuple(a for _, a in listen) if m.has("listen") else (DEFAULT_HTTP_LISTEN,),
        token_file=m.get("token_file", _secret_file, None),
        tls=m.get("tls", section(_tls), None),
    )


def _push(m: Map) -> PushConfig:
    interval = m.get("interval", duration, 60.0)
    if interval < 1:
        # The collector refuses a timestamp (whole seconds) not newer than the last one.
        m.problem("interval", "must be at least 1s")
    return PushConfig(
        url=m.require("url", _http_url, ""),
        secret_file=m.require("secret_file", _secret_file, ""),
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
