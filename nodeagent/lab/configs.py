"""The demo's files: each agent's and the collector's configuration, and the feed's accounts.

Pure text builders (the caller writes them); the shapes are the documented
ones (config.example.yaml, collector.example.yaml, docs/feed.md).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nodeagent.core.model import format_key


@dataclass
class Account:
    """One customer as the feed lists them: a WireGuard key or an OpenVPN login."""

    server: str  # the node name of the server it is on
    public_key: bytes | None = None  # WireGuard
    tunnel_ip: str | None = None  # WireGuard: the peer's allowed IP
    username: str | None = None  # OpenVPN
    password_hash: str | None = None
    listed: bool = True
    expires_at: datetime | None = None


@dataclass
class NodeFiles:
    """What one agent's configuration names."""

    name: str
    dir: Path
    wg_interface: str | None = None
    openvpn_tun: str | None = None
    load_interfaces: list[str] = field(default_factory=list)
    capacity: str = "10Mbit"  # small uplinks, so a few Mbit/s of iperf3 make a visible load

    @property
    def secret(self) -> Path:
        return self.dir / "push.secret"

    @property
    def config(self) -> Path:
        return self.dir / "agent.yaml"


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_config(node: NodeFiles, *, hub: str, feed_port: int, page_port: int, token: Path) -> str:
    lines = [f"node: {{name: {node.name}}}"]
    if node.wg_interface:
        lines += [
            "wireguard:",
            "  interfaces:",
            f"    - {{name: {node.wg_interface}, backend: userspace}}",
        ]
    lines.append(
        f"feed: {{url: 'http://{hub}:{feed_port}/feed', token_file: {token}, long_poll: 10s}}"
    )
    if node.openvpn_tun:
        lines += [
            "openvpn:",
            "  instances:",
            f"    - {{management: {node.dir}/mgmt.sock, password_file: {node.dir}/mgmt.pw, "
            f"interface: {node.openvpn_tun}}}",
        ]
    lines += [
        f"load: {{interfaces: [{', '.join(node.load_interfaces)}], capacity: {node.capacity}, "
        "sample_interval: 1s, window: 3s}",
        "http: {listen: ['127.0.0.1:9586']}",
        f"push: {{url: 'http://{hub}:{page_port}/api/v1/push', secret_file: {node.secret}, "
        "interval: 1s}",
        "log: {level: info}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Place:
    city: str
    country: str
    country_code: str


def collector_config(
    nodes: Sequence[tuple[NodeFiles, Place]], *, listen: Sequence[str], database: Path
) -> str:
    lines = [
        "collector:",
        f"  listen: [{', '.join(repr(a) for a in listen)}]",
        f"  database: {database}",
        "  stale_after: 5s",
        "  source: push",
        "log: {level: info}",
        "nodes:",
    ]
    for node, place in nodes:
        lines.append(
            f"  - {{name: {node.name}, host: {node.name}.demo.example, city: {place.city}, "
            f"country: {place.country}, country_code: {place.country_code}, "
            f"secret_file: {node.secret}}}"
        )
    return "\n".join(lines) + "\n"


def feed_accounts(wg_interfaces: dict[str, str], accounts: Sequence[Account]) -> str:
    """The feed server's accounts file: a full snapshot without a version (it makes those).

    ``wg_interfaces`` maps each WireGuard server's node name to its interface.
    """
    wireguard: dict[str, dict[str, list[dict[str, object]]]] = {
        iface: {"peers": []} for iface in wg_interfaces.values()
    }
    users: list[dict[str, object]] = []
    for a in accounts:
        if not a.listed:
            continue
        entry: dict[str, object]
        if a.public_key is not None:
            entry = {"public_key": format_key(a.public_key), "allowed_ips": [f"{a.tunnel_ip}/32"]}
            wireguard[wg_interfaces[a.server]]["peers"].append(entry)
        else:
            entry = {"username": a.username, "password_hash": a.password_hash}
            users.append(entry)
        if a.expires_at is not None:
            entry["expires_at"] = rfc3339(a.expires_at)
    return json.dumps({"full": True, "wireguard": wireguard, "openvpn": {"users": users}})
