"""The kernel backend's socket: one generic-netlink conversation with the wireguard family.

:class:`NetlinkConversation` owns the socket, its sequence numbers and the
wait for replies: a GET_DEVICE dump fed to a decoder (retried when the kernel
says it was interrupted), and SET_DEVICE messages sent in batches, every ack
checked. What to send is :class:`~nodeagent.wireguard.netlink.backend.KernelBackend`'s.

pyroute2 only resolves the "wireguard" family id. We open our own socket
rather than borrow the fd of pyroute2's: pyroute2 keeps an asyncio transport
reading that fd, which would race us for the replies.

:meth:`NetlinkConversation.close` may be called from any thread, also under a
call in flight (the agent stopping while a pass waits for the kernel): a
netlink socket cannot be ``shutdown()`` (EOPNOTSUPP) and closing its fd does
not wake a thread blocked on it, so every wait for a reply polls an eventfd
beside the socket, which ``close()`` signals. The call then raises
``BackendError("...: closed")`` and sends nothing more; a batch already sent
stands, as the kernel applies each one whole inside the send.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol, Self, TypeAlias, TypeVar

from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.wireguard import wgmsg

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.wireguard.netlink import codec as nlwire


class DumpDecoder(Protocol):
    """Takes the genl payload of each reply of one dump (``buf[start:end]``)."""

    def add(self, buf: bytes, start: int, end: int) -> None: ...


_D = TypeVar("_D", bound=DumpDecoder)

#: Opens the socket of the conversation and names the wireguard family id.
Connect: TypeAlias = Callable[[], tuple[socket.socket, int]]

SOL_NETLINK = 270
NETLINK_GENERIC = 16
NETLINK_CAP_ACK = 10  # error replies quote only the request header, not its peers
NETLINK_EXT_ACK = 11
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33

_SEQ = struct.Struct("=I")
_RECV_SIZE = 1 << 20
# Generous: in the test VM (no KVM) the kernel needs seconds for a batch of new
# peers (a Curve25519 computation each); a stuck conversation must still end.
_TIMEOUT = 300.0
_DUMP_ATTEMPTS = 5
_RETRY_ERRNOS = (errno.EINTR, errno.EBUSY, errno.EAGAIN)


def resolve_family() -> int:
    """The id of the "wireguard" generic-netlink family (BackendError if the module is absent)."""
    try:
        gs = GenericNetlinkSocket()
    except OSError as e:
        raise BackendError(f"wireguard: cannot open generic netlink ({e.strerror})") from None
    try:
        gs.bind("wireguard", wgmsg)
        return int(gs.prid)
    except NetlinkError as e:
        raise BackendError(
            f"wireguard: generic netlink family unavailable (error {e.code}); "
            "is the wireguard module loaded?"
        ) from None
    finally:
        gs.close()


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    # Decoding 20,000 peers allocates ~100,000 small objects, none of them in
    # cycles; the cyclic collector then runs dozens of times for nothing and
    # costs a third of the decode. It is paused only for that span.
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class NetlinkConversation:
    """The generic-netlink socket of one WireGuard interface, opened at the first call.

    ``batch_bytes`` bounds how many messages go to the kernel in one send
    call; ``connect`` replaces opening the socket (tests hand in one end of a
    socketpair).

    Calls come from one thread at a time; :meth:`close` from any thread at any
    time. After ``close()`` every call raises ``BackendError``.
    """

    def __init__(self, interface: str, *, batch_bytes: int, connect: Connect | None = None) -> None:
        self._interface = interface
        self._batch_bytes = batch_bytes
        self._connect: Connect = connect or self._open_netlink
        self._sock: socket.socket | None = None
        self._poll: select.poll | None = None  # the socket and the wake-up eventfd
        self._family = 0
        self._state = threading.Lock()  # guards the three fields below, held only briefly
        self._calls = 0  # calls in flight (nested ones count too)
        self._closed = False
        self._wake: int | None = None  # eventfd that close() signals under a call in flight
        self._seq = int(time.time()) & 0xFFFFFF
        self._buf = bytearray(_RECV_SIZE)
        self.messages_sent = 0  # SET_DEVICE messages so far (tests check no-op calls)

    @property
    def interface(self) -> str:
        return self._interface

    @property
    def family(self) -> int:
        """The generic netlink family id of ``wireguard`` (resolved with the socket)."""
        with self._call("resolve"):
            self._socket()
            return self._family

    @contextlib.contextmanager
    def _call(self, op: str) -> Iterator[None]:
        """The span of one call; the last call in flight after close() releases the socket."""
        with self._state:
            if self._closed:
                raise BackendError(f"{self._interface}: {op}: closed")
            if self._wake is None:
                self._wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            self._calls += 1
        try:
            yield
        finally:
            with self._state:
                self._calls -= 1
                release = self._closed and self._calls == 0
            if release:
                self._release()

    def _check_open(self, op: str) -> None:
        # Before each send: after close() nothing more goes to the kernel.
        if self._closed:
            raise BackendError(f"{self._interface}: {op}: closed")

    def _socket(self) -> socket.socket:
        if self._sock is not None:
            return self._sock
        s, family = self._connect()
        assert self._wake is not None  # opened by _call, which every caller is inside
        poll = select.poll()
        poll.register(s, select.POLLIN)
        poll.register(self._wake, select.POLLIN)
        self._sock, self._poll, self._family = s, poll, family
        return s

    def _open_netlink(self) -> tuple[socket.socket, int]:
        family = resolve_family()
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_GENERIC)
        except OSError as e:
            raise BackendError(f"{self._interface}: cannot open netlink ({e.strerror})") from None
        try:
            s.bind((0, 0))
            s.settimeout(_TIMEOUT)
            s.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
            # Acks of a whole batch queue up before we read them; room for them,
            # and for batches of messages in one send. FORCE needs CAP_NET_ADMIN,
            # which the agent has anyway; fall back to the capped plain option.
            for force, plain, size in (
                (SO_SNDBUFFORCE, socket.SO_SNDBUF, 2 * self._batch_bytes),
                (SO_RCVBUFFORCE, socket.SO_RCVBUF, 4 << 20),
            ):
                try:
                    s.setsockopt(socket.SOL_SOCKET, force, size)
                except OSError:
                    s.setsockopt(socket.SOL_SOCKET, plain, size)
        except OSError as e:
            s.close()
            raise BackendError(f"{self._interface}: netlink setup failed ({e.strerror})") from None
        return s, family

    def _next_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq = (self._seq + n) & 0x7FFFFFFF
        return seq

    def _recv(self, s: socket.socket, op: str) -> bytes:
        # Every socket _socket() opens has its poll; only a scripted stand-in
        # that answers at once (unit tests) is read without one.
        if self._poll is not None:
            ready = self._poll.poll(_TIMEOUT * 1000)
            if any(fd == self._wake for fd, _ in ready):
                # close() from another thread: stop waiting. Whatever was sent stands.
                raise BackendError(f"{self._interface}: {op}: closed")
            if not ready:
                raise BackendError(f"{self._interface}: {op} failed (timed out)")
        try:
            n = s.recv_into(self._buf, len(self._buf))
        except OSError as e:
            if e.errno == errno.ENOBUFS:
                # Replies were dropped: the state of the conversation is unknown.
                self._reset()
            raise BackendError(
                f"{self._interface}: {op} failed ({e.strerror or 'timed out'})"
            ) from None
        return bytes(self._buf[:n])

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = self._poll = None

    def _release(self) -> None:
        """Close the socket and the eventfd: no call is in flight, and none will be."""
        self._reset()
        wake, self._wake = self._wake, None
        if wake is not None:
            os.close(wake)

    def _fail(self, op: str, code: int) -> BackendError:
        if code == errno.ENODEV:
            return InterfaceMissing(f"{self._interface}: no such interface ({op})")
        return BackendError(f"{self._interface}: {op} failed ({errno.errorcode.get(code, code)})")

    # --- dumps --------------------------------------------------------------

    def dump(self, new_decoder: Callable[[], _D], op: str) -> _D:
        """One complete GET_DEVICE dump fed to a fresh decoder, retried if interrupted."""
        with self._call(op):
            for _attempt in range(_DUMP_ATTEMPTS):
                dec = new_decoder()
                with _gc_paused():
                    if self._dump_once(dec, op):
                        return dec
        raise BackendError(f"{self._interface}: {op} kept being interrupted")

    def _dump_once(self, dec: DumpDecoder, op: str) -> bool:
        """One GET_DEVICE dump into ``dec``; False when the kernel says it was interrupted."""
        s = self._socket()
        seq = self._next_seq()
        self._check_open(op)
        try:
            s.send(nlwire.encode_get_device(self._family, self._interface, seq=seq))
        except OSError as e:
            raise BackendError(f"{self._interface}: {op} failed ({e.strerror})") from None
        interrupted = False
        while True:
            data = self._recv(s, op)
            try:
                for m in nlwire.iter_messages(data):
                    if m.seq != seq:
                        continue  # a stale reply from an earlier, abandoned request
                    if m.type == nlwire.NLMSG_DONE:
                        return not interrupted
                    if m.type == nlwire.NLMSG_ERROR:
                        code = nlwire.error_code(data, m)
                        if code == 0:
                            continue
                        if code in _RETRY_ERRNOS:
                            return False
                        raise self._fail(op, code)
                    if m.flags & nlwire.NLM_F_DUMP_INTR:
                        interrupted = True
                    if m.type == self._family and not interrupted:
                        dec.add(data, m.start, m.end)
            except nlwire.DecodeError as e:
                self._reset()
                raise BackendError(f"{self._interface}: {op} got a bad reply ({e})") from None

    # --- acknowledged sends -------------------------------------------------

    def send_messages(self, msgs: Iterable[bytes], op: str) -> int:
        """Send SET_DEVICE messages (any sequence numbers) and check every ack; the count."""
        with self._call(op):
            return self._send_acked(self._socket(), msgs, op)

    def _send_acked(self, s: socket.socket, msgs: Iterable[bytes], op: str) -> int:
        """Send ``msgs`` in batches, numbering them, and check every ack; returns the count.

        The kernel handles a datagram's messages one after the other inside the
        send call, so the acks of a batch are all queued when ``send`` returns.
        An error does not stop the messages after it; the first one is reported.
        """
        first_error = 0
        count = 0
        it = iter(msgs)
        nxt = next(it, None)
        while nxt is not None:
            batch: list[bytes] = []
            pending: set[int] = set()
            size = 0
            while nxt is not None and (not batch or size + len(nxt) <= self._batch_bytes):
                seq = self._next_seq()
                batch.append(_with_seq(nxt, seq))
                pending.add(seq)
                size += len(nxt)
                nxt = next(it, None)
            self._check_open(op)
            self.messages_sent += len(batch)
            count += len(batch)
            try:
                s.send(b"".join(batch))
            except OSError as e:
                self._reset()
                raise BackendError(f"{self._interface}: {op} failed ({e.strerror})") from None
            while pending:
                data = self._recv(s, op)
                try:
                    for m in nlwire.iter_messages(data):
                        if m.type != nlwire.NLMSG_ERROR or m.seq not in pending:
                            continue
                        pending.discard(m.seq)
                        code = nlwire.error_code(data, m)
                        if code and not first_error:
                            first_error = code
                except nlwire.DecodeError as e:
                    self._reset()
                    raise BackendError(f"{self._interface}: {op} got a bad reply ({e})") from None
        if first_error:
            raise self._fail(op, first_error)
        return count

    # --- closing ------------------------------------------------------------

    def close(self) -> None:
        """Close for good, from any thread; a call in flight stops waiting and raises at once."""
        with self._state:
            if self._closed:
                return
            self._closed = True
            if self._calls:
                if self._wake is not None:
                    os.eventfd_write(self._wake, 1)
                return  # the call in flight releases the socket as it ends
        self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_seq(msg: bytes, seq: int) -> bytes:
    # Messages are encoded before their count is known, with sequence numbers
    # from 0, and renumbered here from the socket's own counter.
    return msg[:8] + _SEQ.pack(seq) + msg[12:]
