"""The lab as a whole: :class:`Lab` owns what it builds; :func:`tunnel_pair` builds a tunnel.

A :class:`TunnelPair` is a server and a client namespace on a veth link, each
with a wireguard-go interface, the client already configured with the server
as its peer. Everything is torn down by the :class:`Lab` even when a step
fails half-way.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from nodeagent.lab.netns import LabError, Namespace, VethPair, genkey, unique_name, veth_pair
from nodeagent.lab.wireguard_go import WireguardGo
from nodeagent.wireguard.uapi import text as uapi_text


class Lab:
    """Owns every namespace and daemon it made, and removes them all on close, newest first."""

    def __init__(self) -> None:
        self._daemons: list[WireguardGo] = []
        self._namespaces: list[Namespace] = []

    def namespace(self, prefix: str = "nal") -> Namespace:
        ns = Namespace.create(prefix=prefix)
        self._namespaces.append(ns)
        return ns

    def wireguard_go(self, namespace: Namespace, prefix: str = "wgl") -> WireguardGo:
        """Start a wireguard-go interface with a unique name in ``namespace``."""
        wg = WireguardGo(unique_name(prefix), namespace)
        # Registered before start so that a daemon that started but never
        # answered is still stopped at close.
        self._daemons.append(wg)
        wg.start()
        return wg

    def close(self) -> None:
        """Stop daemons, then delete namespaces; carries on past failures and reports the first."""
        first: BaseException | None = None
        for wg in reversed(self._daemons):
            try:
                wg.stop()
            except Exception as e:
                first = first or e
        for ns in reversed(self._namespaces):
            try:
                ns.delete()
            except Exception as e:
                first = first or e
        self._daemons.clear()
        self._namespaces.clear()
        if first is not None:
            raise LabError("lab cleanup failed") from first

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass
class TunnelPair:
    """A server and a client namespace on a veth link, each with a wireguard-go interface.

    The client knows the server as its peer; the server does not know the
    client yet: that is for the code under test to add.
    """

    server_ns: Namespace
    client_ns: Namespace
    server: WireguardGo
    client: WireguardGo
    veth: VethPair
    server_private: bytes
    server_public: bytes
    client_private: bytes
    client_public: bytes
    server_port: int
    server_tunnel_ip: str = "10.99.0.1"
    client_tunnel_ip: str = "10.99.0.2"

    def ping_argv(self, count: int = 3, interval: float = 0.2, wait: float = 2.0) -> list[str]:
        return [
            "ping", "-n", "-q", "-c", str(count), "-i", str(interval),
            "-W", str(wait), self.server_tunnel_ip,
        ]  # fmt: skip

    def ping(
        self, count: int = 3, interval: float = 0.2, wait: float = 2.0
    ) -> subprocess.CompletedProcess[str]:
        """Ping the server's tunnel address from the client namespace (never raises on loss)."""
        return self.client_ns.run(
            self.ping_argv(count, interval, wait),
            check=False,
            timeout=count * interval + wait + 30,
        )

    def ping_popen(
        self, count: int = 300, interval: float = 0.01, wait: float = 2.0
    ) -> subprocess.Popen[str]:
        """Start a ping in the client namespace; the caller waits for it."""
        return self.client_ns.popen(self.ping_argv(count, interval, wait))


def tunnel_pair(lab: Lab, *, server_port: int = 51820) -> TunnelPair:
    """Build a :class:`TunnelPair` inside ``lab`` (which tears it down)."""
    server_ns = lab.namespace("nas")
    client_ns = lab.namespace("nac")
    veth = veth_pair(server_ns, client_ns, address_a="192.0.2.1/24", address_b="192.0.2.2/24")
    server = lab.wireguard_go(server_ns, "wgs")
    client = lab.wireguard_go(client_ns, "wgc")
    server_private, server_public = genkey()
    client_private, client_public = genkey()

    server.uapi_set(uapi_text.device_lines(server_private, server_port))
    server.up("10.99.0.1/24")

    client.uapi_set(
        [
            *uapi_text.device_lines(client_private, 0),
            f"public_key={server_public.hex()}",
            f"endpoint={veth.ip_a}:{server_port}",
            "replace_allowed_ips=true",
            "allowed_ip=10.99.0.0/24",
        ]
    )
    client.up("10.99.0.2/32")
    client_ns.ip("route", "add", "10.99.0.0/24", "dev", client.name)
    return TunnelPair(
        server_ns=server_ns,
        client_ns=client_ns,
        server=server,
        client=client,
        veth=veth,
        server_private=server_private,
        server_public=server_public,
        client_private=client_private,
        client_public=client_public,
        server_port=server_port,
    )
