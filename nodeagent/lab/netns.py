"""Network namespaces and veth links for the lab and the netns tests, and the commands behind them.

Everything is driven through ``ip`` (and ``wg`` for keys) as an operator
would, and needs root. Names made by :func:`unique_name` are unique on the
host, as interface names must be for WireGuard's UAPI sockets
(``lab.wireguard_go``). The daemons are in ``lab.wireguard_go``; the
:class:`~nodeagent.lab.tunnel.Lab` that owns and tears down all of it, and the
tunnel pair, in ``lab.tunnel``.
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from nodeagent.core.names import MAX_INTERFACE_NAME


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


# The commands the lab runs, and the Debian package of each (`make deps-netns` installs them).
DEBIAN_PACKAGES = {
    "ip": "iproute2",
    "wireguard-go": "wireguard-go",
    "wg": "wireguard-tools",
    "ping": "iputils-ping",
    "openvpn": "openvpn",
    "openssl": "openssl",
    "iperf3": "iperf3",
}


def missing_tools(tools: Sequence[str]) -> list[str]:
    """``"TOOL (Debian package PKG)"`` for each of ``tools`` not on PATH."""
    return [
        f"{tool} (Debian package {DEBIAN_PACKAGES.get(tool, tool)})"
        for tool in tools
        if shutil.which(tool) is None
    ]


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
