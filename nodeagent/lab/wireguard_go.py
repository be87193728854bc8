"""wireguard-go daemons for the lab: one in the foreground a namespace, reached over UAPI.

WireGuard's UAPI sockets live in one directory (``core.names.UAPI_SOCKET_DIR``)
whatever the namespace, so interface names must be unique on the host
(:func:`~nodeagent.lab.netns.unique_name`), and a daemon killed mid-run leaves
a socket that :func:`iter_stale_sockets` finds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import IO, Self

from nodeagent.core.names import UAPI_SOCKET_DIR, interface_name_problem, uapi_socket_path
from nodeagent.lab.interrupts import held
from nodeagent.lab.netns import LabError, Namespace
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import exchange

_WG_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "error"}


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
            with held():  # a SIGINT cannot land between the fork and the assignment
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
        request = uapi_text.set_request(lines)
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
