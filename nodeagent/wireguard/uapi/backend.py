"""The userspace WireGuard backend: wireguard-go or boringtun over their UAPI socket.

One short-lived AF_UNIX connection per operation, as ``wg`` does: the daemon
drops a connection after a failed transaction, and a fresh one per call leaves
no state to go stale between reconciles. A whole plan is one ``set=1``
transaction, so the daemon applies it under one lock.

:meth:`UapiBackend.close` may be called from any thread: it ``shutdown()``s the
connections in flight, so a call waiting on a wedged daemon returns at once
(``BackendError("...: closed")``) instead of after its timeout.
"""

from __future__ import annotations

import contextlib
import errno as errno_mod
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from typing import TypeVar

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan
from nodeagent.core.names import uapi_socket_path
from nodeagent.wireguard.link import ensure_addresses_up
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.idle import UapiScrubPort
from nodeagent.wireguard.uapi.segments import peer_segments

log = logging.getLogger(__name__)

_T = TypeVar("_T")
_CHUNK = 1 << 16  # below malloc's mmap threshold: the buffers are reused, not faulted in
MAX_PEERS = 1 << 16

#: Sends one request to a UAPI socket and returns the whole reply as text.
Exchange = Callable[[str, bytes], str]


def _errno_name(code: int) -> str:
    return errno_mod.errorcode.get(abs(code), str(code))


def exchange(socket_path: str, request: bytes, timeout: float = 60.0) -> str:
    """Send ``request`` and read the reply up to its terminating blank line.

    A reply's lines are never empty, so the first ``\\n\\n`` in the stream ends
    it. Chunks are kept as bytes and decoded once: a 20,000-peer ``get`` is
    several megabytes. Raises FileNotFoundError/ConnectionRefusedError when no
    daemon listens, ConnectionError when it hangs up before a full reply.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(socket_path)
        return _converse(sock, request)


def _converse(sock: socket.socket, request: bytes) -> str:
    """:func:`exchange` on a connected socket."""
    return "".join(_reply_chunks(sock, request))


def _reply_chunks(sock: socket.socket, request: bytes) -> Iterator[str]:
    """Send ``request``; the reply's text as it arrives, up to the blank line that ends it.

    A reply is ASCII: each chunk decodes alone as the whole would (a stray byte
    becomes one U+FFFD either way), and no more than one chunk is held here. A
    reply's lines are never empty and the daemon sends nothing after it (it
    waits for the next request), so only the end of what arrived is looked at:
    searching each chunk of 20 MB of short lines for a blank line cost a third
    of a scrub read. A blank line inside what arrived is the parsers' to refuse.
    """
    # The daemon stops reading at the first bad line, answers, and hangs
    # up; its errno may still be waiting to be read.
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request)
    last = b""  # the previous chunk's last byte: the blank line may straddle two
    while True:
        try:
            chunk = sock.recv(_CHUNK)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            raise ConnectionError("UAPI daemon closed the connection before replying")
        yield chunk.decode("ascii", errors="replace")
        if chunk.endswith(b"\n\n") or last + chunk == b"\n\n":
            return
        last = chunk[-1:]


class UapiBackend:
    """A WireGuard interface run by a userspace daemon, reached through its UAPI socket.

    Calls come from one thread at a time; :meth:`close` from any thread at any
    time. After ``close()`` every call raises ``BackendError``.
    """

    def __init__(
        self,
        interface: str,
        socket_path: str | None = None,
        *,
        netns: str | None = None,
        timeout: float = 60.0,
        exchange_fn: Exchange | None = None,
    ) -> None:
        """``netns`` is the namespace holding the daemon's tun link, used by ``setup`` only.

        ``exchange_fn`` replaces the socket conversation (tests, instrumentation).
        """
        self._interface = interface
        self.socket_path = socket_path or uapi_socket_path(interface)
        self._netns = netns
        self._timeout = timeout
        self._exchange: Exchange = exchange_fn or self._tracked_exchange
        self._stream: Callable[[str, bytes], Iterable[str]] = (
            self._tracked_chunks if exchange_fn is None else lambda p, r: (exchange_fn(p, r),)
        )
        self._state = threading.Lock()  # guards the two fields below, held only briefly
        self._closed = False
        self._in_flight: set[socket.socket] = set()

    @property
    def interface(self) -> str:
        return self._interface

    @property
    def max_peers(self) -> int:
        """wireguard-go's MaxPeers: it refuses the transaction that would pass it."""
        return MAX_PEERS

    def presence(self) -> Hashable | None:
        """The UAPI socket's inode and creation time: a restarted daemon makes a new socket.

        The time tells them apart even when tmpfs hands the new socket the old inode number.
        """
        try:
            st = os.stat(self.socket_path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_ctime_ns)

    def chunks(self, socket_path: str, request: bytes) -> Iterator[str]:
        """One request, its reply's text as it arrives, over this backend's connections.

        The scrub port talks to the daemon through this, so that :meth:`close`
        reaches its connections too. Raises OSError as :func:`exchange` does
        (while iterating), and ``BackendError`` once closed.
        """
        self._check_open("request")
        try:
            yield from self._stream(socket_path, request)
        except OSError:
            self._check_open("request")
            raise

    def _tracked_exchange(self, socket_path: str, request: bytes) -> str:
        return "".join(self._tracked_chunks(socket_path, request))

    def _tracked_chunks(self, socket_path: str, request: bytes) -> Iterator[str]:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(self._timeout)
            with self._state:
                self._check_open("connect")
                self._in_flight.add(sock)
            try:
                sock.connect(socket_path)
                # A close() that came while connecting had nothing to cut yet.
                self._check_open("connect")
                yield from _reply_chunks(sock, request)
            finally:
                with self._state:
                    self._in_flight.discard(sock)

    def _check_open(self, op: str) -> None:
        if self._closed:
            raise BackendError(f"{self._interface}: {op}: closed") from None

    def _request(self, request: bytes, op: str) -> str:
        self._check_open(op)
        try:
            return self._exchange(self.socket_path, request)
        except OSError as e:
            self._check_open(op)  # cut by close(): say so, not "connection closed"
            raise self._failure(op, e) from None

    def _failure(self, op: str, e: OSError) -> BackendError:
        if isinstance(e, FileNotFoundError | ConnectionRefusedError):
            return InterfaceMissing(
                f"{self._interface}: no userspace WireGuard daemon on its UAPI socket"
            )
        if isinstance(e, TimeoutError):
            return BackendError(f"{self._interface}: {op} timed out on the UAPI socket")
        reason = _errno_name(e.errno) if e.errno else "connection closed"
        return BackendError(f"{self._interface}: {op} failed on the UAPI socket ({reason})")

    def read(self) -> Device:
        """The device's private key, port and peers, as the daemon reports them, and its digest."""
        return self._get(lambda chunks: uapi_text.parse_get_segments(peer_segments(chunks)))

    def config_digest(self) -> int | None:
        """The configuration digest of one ``get=1`` reply, taken as it arrives, not parsed."""
        return self._get(lambda chunks: uapi_text.digest_segments(peer_segments(chunks)))

    def _get(self, take: Callable[[Iterable[str]], tuple[_T, int]]) -> _T:
        """One ``get=1``; ``take`` reads its text as it arrives (a value and the errno)."""
        self._check_open("get")
        try:
            value, code = take(self._stream(self.socket_path, uapi_text.GET_REQUEST))
        except OSError as e:
            self._check_open("get")  # cut by close(): say so, not "connection closed"
            raise self._failure("get", e) from None
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self._interface}: get: {e}") from None
        if code:
            raise BackendError(f"{self._interface}: get refused, errno {_errno_name(code)}")
        return value

    def _set(self, request: bytes, op: str) -> None:
        """Send one ``set=1`` request (nothing when it is empty) and check its errno."""
        if not request:
            return
        reply = self._request(request, op)
        try:
            code = uapi_text.parse_set_reply(reply)
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self._interface}: {op}: {e}") from None
        if code:
            raise BackendError(f"{self._interface}: {op} refused, errno {_errno_name(code)}")

    def apply(self, plan: Plan) -> None:
        """Send the whole plan as one transaction; an empty plan sends nothing."""
        if plan.empty:
            return
        start = time.monotonic()
        self._set(uapi_text.plan_request(plan), "set peers")
        c = plan.counts()
        log.debug(
            "uapi_apply interface=%s added=%d updated=%d removed=%d ms=%d",
            self._interface,
            c["added"],
            c["updated"],
            c["removed"],
            (time.monotonic() - start) * 1000,
        )

    def setup(self, setup: InterfaceSetup) -> None:
        """Set key and port where they differ, then add missing addresses and bring the link up.

        A userspace daemon creates its own interface: if none is listening,
        this raises InterfaceMissing rather than starting one.
        """
        current = self.read()
        want_key = uapi_text.clamp_private_key(setup.private_key)
        private_key = setup.private_key if current.private_key != want_key else None
        port = setup.listen_port if current.listen_port != setup.listen_port else None
        self._set(uapi_text.set_request(uapi_text.device_lines(private_key, port)), "set device")
        ensure_addresses_up(self._interface, setup.addresses, netns=self._netns)

    # --- scrubbing: one get=1 a pass, idle or not (privacy/scrub.py) --------

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Peers with an endpoint and no handshake for ``idle_after`` s, as configured."""
        return UapiScrubPort(self).idle_peers(idle_after)

    def readd(self, peers: Sequence[Peer]) -> None:
        """Remove and re-add each peer in one transaction, which wipes its endpoint."""
        UapiScrubPort(self).readd(peers)

    def close(self) -> None:
        """Close for good, from any thread: a call in flight is cut and raises at once.

        Every operation opens and closes its own connection; this ends those in
        flight (a wedged daemon would otherwise hold the call for its timeout).
        """
        with self._state:
            self._closed = True
            # Under the lock: a socket in the set is still open (its call
            # leaves the set before closing it), so no fd is reused under us.
            for sock in self._in_flight:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
