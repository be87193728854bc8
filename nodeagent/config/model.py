"""The validated configuration as typed, frozen dataclasses: what the agent is built from.

``nodeagent.config.agent.load_config`` builds a ``Config`` from the file, one
section at a time; every other part of the agent reads only these types.
Durations are seconds, rates bits per second.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "Config",
    "FeedConfig",
    "HTTPConfig",
    "LoadConfig",
    "LogConfig",
    "OpenVPNInstanceConfig",
    "PrivacyConfig",
    "PushConfig",
    "TLSConfig",
    "WireguardConfig",
    "WireguardInterfaceConfig",
]


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
    """One OpenVPN server the agent authenticates users for (docs/openvpn.md)."""

    management: str  # a unix socket's absolute path, or a loopback host:port
    interface: str  # its tun device
    password_file: str | None = None  # the management password (mode 0600)


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
