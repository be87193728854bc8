"""The lab as a whole: :class:`Lab` owns what it builds; :func:`tunnel_pair` builds a tunnel.

A :class:`TunnelPair` is a server and a client namespace on a veth link, each
with a wireguard-go interface, the client already configured with the server
as its peer. Everything is torn down by the :class:`Lab` even when a step
fails half-way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from nodeagent.lab.interrupts import held
from nodeagent.lab.netns import (
    LabError,
    Namespace,
    VethPair,
    genkey,
    run,
    unique_name,
    veth_pair,
)
from nodeagent.lab.wireguard_go import WireguardGo
from nodeagent.wireguard.uapi import text as uapi_text


class Lab:
    """Owns every process, daemon, root link and namespace it made; removes them all on close.

    Each is recorded before (or, under ``interrupts.held``, together with) its
    creation, so a SIGINT at any moment leaves nothing outside the books.
    """

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[bytes]] = []
        self._daemons: list[WireguardGo] = []
        self._root_links: list[str] = []
        self._namespaces: list[Namespace] = []

    def namespace(self, prefix: str = "nal") -> Namespace:
        name = unique_name(prefix)
        # Recorded first: a namespace made half-way is still deleted
        # (deleting one that was never made is no error).
        self._namespaces.append(Namespace(name))
        return Namespace.create(name)

    def wireguard_go(self, namespace: Namespace, prefix: str = "wgl") -> WireguardGo:
        """Start a wireguard-go interface with a unique name in ``namespace``."""
        wg = WireguardGo(unique_name(prefix), namespace)
        # Registered before start so that a daemon that started but never
        # answered is still stopped at close.
        self._daemons.append(wg)
        wg.start()
        return wg

    def root_link(self, prefix: str) -> str:
        """A unique name for a link in the host's namespace, deleted at close (create it next)."""
        name = unique_name(prefix)
        self._root_links.append(name)
        return name

    def process(
        self,
        argv: Sequence[str],
        *,
        ns: Namespace | None = None,
        log: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start a command (in ``ns`` if given), output appended to ``log``; stopped at close."""
        full = ns.argv(argv) if ns is not None else list(argv)
        with held(), contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("ab")) if log is not None else subprocess.DEVNULL
            proc = subprocess.Popen(
                full, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
            self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """SIGTERM one process, SIGKILL if it lingers (it stays in the books: close skips it)."""
        _stop_all([proc], timeout)

    def close(self) -> None:
        """Processes, daemons, root links, namespaces; goes on past failures, reports the first.

        Each item leaves the books as it is handled, so a close that was cut
        short can be run again.
        """
        first: BaseException | None = None
        _stop_all(self._procs, 10.0)
        self._procs.clear()
        while self._daemons:
            try:
                self._daemons.pop().stop()
            except Exception as e:
                first = first or e
        while self._root_links:
            run(["ip", "link", "delete", self._root_links.pop()], check=False)
        while self._namespaces:
            try:
                self._namespaces.pop().delete()
            except Exception as e:
                first = first or e
        if first is not None:
            raise LabError("lab cleanup failed") from first

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _stop_all(procs: Sequence[subprocess.Popen[bytes]], timeout: float) -> None:
    live = [p for p in procs if p.poll() is None]
    for p in live:
        p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in live:
        try:
            p.wait(max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


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


@dataclass(frozen=True)
class WgEnd:
    """One wireguard-go interface of the lab with its key pair."""

    wg: WireguardGo
    private: bytes
    public: bytes


def wg_server(lab: Lab, ns: Namespace, address: str, port: int, prefix: str = "wgs") -> WgEnd:
    """A wireguard-go server: key, listen port, ``address`` (with its prefix), up; no peers."""
    wg = lab.wireguard_go(ns, prefix)
    private, public = genkey()
    wg.uapi_set(uapi_text.device_lines(private, port))
    wg.up(address)
    return WgEnd(wg, private, public)


def wg_client(
    lab: Lab,
    ns: Namespace,
    *,
    server_public: bytes,
    endpoint: str,
    address: str,
    subnet: str,
    prefix: str = "wgc",
) -> WgEnd:
    """A wireguard-go client: the server at ``endpoint`` is its one peer, routing ``subnet``."""
    wg = lab.wireguard_go(ns, prefix)
    private, public = genkey()
    wg.uapi_set(
        [
            *uapi_text.device_lines(private, 0),
            f"public_key={server_public.hex()}",
            f"endpoint={endpoint}",
            "replace_allowed_ips=true",
            f"allowed_ip={subnet}",
        ]
    )
    wg.up(f"{address}/32")
    ns.ip("route", "add", subnet, "dev", wg.name)
    return WgEnd(wg, private, public)


def tunnel_pair(lab: Lab, *, server_port: int = 51820) -> TunnelPair:
    """Build a :class:`TunnelPair` inside ``lab`` (which tears it down)."""
    server_ns = lab.namespace("nas")
    client_ns = lab.namespace("nac")
    veth = veth_pair(server_ns, client_ns, address_a="192.0.2.1/24", address_b="192.0.2.2/24")
    server = wg_server(lab, server_ns, "10.99.0.1/24", server_port)
    client = wg_client(
        lab,
        client_ns,
        server_public=server.public,
        endpoint=f"{veth.ip_a}:{server_port}",
        address="10.99.0.2",
        subnet="10.99.0.0/24",
    )
    return TunnelPair(
        server_ns=server_ns,
        client_ns=client_ns,
        server=server.wg,
        client=client.wg,
        veth=veth,
        server_private=server.private,
        server_public=server.public,
        client_private=client.private,
        client_public=client.public,
        server_port=server_port,
    )
