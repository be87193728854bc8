"""Network namespaces, veth pairs and wireguard-go daemons for the lab and the netns tests.

Everything is driven through ``ip`` and ``wireguard-go`` as an operator would,
needs root, and is torn down by :class:`Lab` even when a step fails half-way.
WireGuard's UAPI sockets live in one directory (``core.names.UAPI_SOCKET_DIR``)
whatever the namespace, so interface names must be unique on the host:
:func:`unique_name` makes them.
"""

from __future__ import annotations

import base64
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Self

from nodeagent.core.names import (
    MAX_INTERFACE_NAME,
    UAPI_SOCKET_DIR,
    interface_name_problem,
    uapi_socket_path,
)
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import exchange

_WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}


class LabError(Exception):
    """A lab step failed: a command, a daemon start, a missing prerequisite."""


def missing_prerequisites() -> list[str]:
    """What this host lacks to build the lab (empty when everything is there)."""
    missing: list[str] = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces need CAP_NET_ADMIN)")
    missing.extend(
        f"the {tool} binary"
        for tool in ("ip", "wireguard-go", "wg", "ping")
        if shutil.which(tool) is None
    )
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    return missing


def unique_name(prefix: str) -> str:
    """``prefix`` plus random hex, at most the kernel's limit: safe for links and sockets."""
    room = MAX_INTERFACE_NAME - len(prefix)
    if room < 4:
        raise ValueError("name prefix too long for a unique interface name")
    return prefix + secrets.token_hex(4)[: min(room, 8)]


def run(
    argv: Sequence[str], *, check: bool = True, input: str | None = None, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output; LabError when it fails and ``check``."""
    try:
        proc = subprocess.run(
            list(argv), input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise LabError(f"{argv[0]} timed out after {timeout}s") from None
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(argv[:4])} ... failed ({proc.returncode}): {proc.stderr.strip()}"
        )
    return proc


def genkey() -> tuple[bytes, bytes]:
    """A fresh (private, public) WireGuard key pair, made by ``wg``."""
    private = run(["wg", "genkey"]).stdout.strip()
    public = run(["wg", "pubkey"], input=private + "\n").stdout.strip()
    return base64.b64decode(private), base64.b64decode(public)


class Namespace:
    """A named network namespace with its loopback up."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def create(cls, name: str | None = None, *, prefix: str = "nal") -> Namespace:
        """Create a namespace (a unique name from ``prefix`` unless ``name`` is given)."""
        ns = cls(name or unique_name(prefix))
        run(["ip", "netns", "add", ns.name])
        try:
            ns.ip("link", "set", "lo", "up")
        except LabError:
            ns.delete()
            raise
        return ns

    def delete(self) -> None:
        """Delete the namespace; a namespace already gone is not an error."""
        run(["ip", "netns", "delete", self.name], check=False)

    def exists(self) -> bool:
        return os.path.exists(f"/var/run/netns/{self.name}")

    def argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside this namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        input: str | None = None,
        timeout: float = 30.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the namespace to completion."""
        return run(self.argv(argv), check=check, input=input, timeout=timeout)

    def popen(
        self, argv: Sequence[str], *, env: dict[str, str] | None = None, capture: bool = True
    ) -> subprocess.Popen[str]:
        """Start a command inside the namespace; the caller owns the process.

        ``ip netns exec`` execs the command, so the Popen's pid is the command's own.
        """
        out = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(
            self.argv(argv),
            stdout=out,
            stderr=subprocess.STDOUT if capture else subprocess.DEVNULL,
            text=True,
            env={**os.environ, **(env or {})},
        )

    def ip(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``ip -n NS ...`` (cheaper than ``ip netns exec NS ip ...``)."""
        return run(["ip", "-n", self.name, *args])

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.delete()

    def __repr__(self) -> str:
        return f"Namespace({self.name})"


@dataclass(frozen=True)
class VethPair:
    """Two ends of a veth link, each in its namespace with its address (``a.b.c.d/len``)."""

    ns_a: Namespace
    name_a: str
    address_a: str
    ns_b: Namespace
    name_b: str
    address_b: str

    @property
    def ip_a(self) -> str:
        return self.address_a.split("/")[0]

    @property
    def ip_b(self) -> str:
        return self.address_b.split("/")[0]


def veth_pair(
    ns_a: Namespace,
    ns_b: Namespace,
    *,
    address_a: str,
    address_b: str,
    name_a: str = "veth0",
    name_b: str = "veth0",
) -> VethPair:
    """Join two namespaces with a veth link, address both ends and bring them up.

    The link is created straight inside ``ns_a`` with its peer in ``ns_b``, so
    nothing ever appears in the host's namespace (and the names may repeat
    across namespaces).
    """
    run(
        [
            *("ip", "-n", ns_a.name, "link", "add", name_a, "type", "veth"),
            *("peer", "name", name_b, "netns", ns_b.name),
        ]
    )
    for ns, name, addr in ((ns_a, name_a, address_a), (ns_b, name_b, address_b)):
        ns.ip("addr", "add", addr, "dev", name)
        ns.ip("link", "set", name, "up")
    return VethPair(ns_a, name_a, address_a, ns_b, name_b, address_b)


class WireguardGo:
    """One wireguard-go daemon in the foreground, owning a tun link inside a namespace."""

    def __init__(self, name: str, namespace: Namespace) -> None:
        problem = interface_name_problem(name)
        if problem is not None:
            raise ValueError(f"{name!r} {problem}")  # a lab name, not a secret
        self.name = name
        self.namespace = namespace
        self.socket_path = uapi_socket_path(name)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> Self:
        """Start the daemon and wait until its UAPI socket answers."""
        if os.path.exists(self.socket_path):
            # A live daemon with this name elsewhere would be silently shared.
            raise LabError(f"{self.name}: a UAPI socket with this name already exists")
        # Output goes to a file, not a pipe: a pipe nobody drains would block
        # the daemon once it fills.
        with tempfile.TemporaryFile() as out:
            self._proc = subprocess.Popen(
                self.namespace.argv(["wireguard-go", "-f", self.name]),
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **_WG_ENV},
            )
            return self._wait_started(out, timeout)

    def _wait_started(self, out: IO[bytes], timeout: float) -> Self:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                self._proc = None
                out.seek(0)
                output = out.read(2000).decode(errors="replace").strip()
                raise LabError(f"{self.name}: wireguard-go exited at start: {output}")
            if self._answers():
                return self
            time.sleep(0.02)
        self.stop()
        raise LabError(f"{self.name}: wireguard-go did not open its UAPI socket in {timeout}s")

    def _answers(self) -> bool:
        try:
            reply = exchange(self.socket_path, uapi_text.GET_REQUEST, timeout=2.0)
        except OSError:
            return False
        return reply.endswith("errno=0\n\n")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and remove a socket it left behind."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout)
        # A killed daemon leaves its socket; the next daemon of that name would refuse it.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)

    def uapi_set(self, lines: Sequence[str]) -> None:
        """Send raw ``set=1`` lines (the lab sets endpoints, which the agent never does)."""
        request = uapi_text.set_request(list(lines))
        if not request:
            return
        code = uapi_text.parse_set_reply(exchange(self.socket_path, request))
        if code:
            raise LabError(f"{self.name}: UAPI set refused, errno {code}")

    def up(self, *addresses: str) -> None:
        """Add addresses to the tun link and bring it up."""
        for addr in addresses:
            self.namespace.ip("addr", "add", addr, "dev", self.name)
        self.namespace.ip("link", "set", self.name, "up")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"WireguardGo({self.name} in {self.namespace.name})"


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


def iter_stale_sockets(prefixes: Sequence[str]) -> Iterator[str]:
    """UAPI sockets left by lab daemons (names starting with ``prefixes``) that nobody answers."""
    try:
        entries = os.listdir(UAPI_SOCKET_DIR)
    except FileNotFoundError:
        return
    for entry in entries:
        if not entry.endswith(".sock") or not entry.startswith(tuple(prefixes)):
            continue
        path = f"{UAPI_SOCKET_DIR}/{entry}"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(path)
            except OSError:
                yield path
