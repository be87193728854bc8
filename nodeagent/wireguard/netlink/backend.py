"""The kernel WireGuard backend: generic netlink I/O around the pure codec in ``nlwire``.

pyroute2 resolves the "wireguard" generic-netlink family and manages the link
(rtnetlink); the peer traffic itself goes through a plain netlink socket with
messages packed by ``nlwire``, many peers a message and many messages a send,
because pyroute2's per-peer encoder is an order of magnitude slower than
``wg setconf`` at 20,000 peers.

We open our own socket rather than borrow the fd of pyroute2's: pyroute2 keeps
an asyncio transport reading that fd, which would race us for the replies.

:meth:`KernelBackend.close` may be called from any thread, also under a call in
flight (the agent stopping while a pass waits for the kernel): a netlink socket
cannot be ``shutdown()`` (EOPNOTSUPP) and closing its fd does not wake a thread
blocked on it, so every wait for a reply polls an eventfd beside the socket,
which ``close()`` signals. The call then raises ``BackendError("...: closed")``
and sends nothing more; a batch already sent stands, as the kernel applies
each one whole inside the send.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol, TypeAlias, TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.generic import GenericNetlinkSocket
from pyroute2.netlink.generic.wireguard import wgmsg

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan
from nodeagent.wireguard.link import ensure_addresses_up
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.idle import KernelScrubPort
from nodeagent.wireguard.uapi.text import clamp_private_key

log = logging.getLogger(__name__)


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
MAX_PEERS = 1 << 20
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


class KernelBackend:
    """One kernel WireGuard interface, driven over generic netlink.

    ``max_message`` bounds each SET_DEVICE message (the peers nest of one
    message must stay under 64 KiB); ``batch_bytes`` bounds how many such
    messages go to the kernel in one send call. ``connect`` replaces opening
    the generic netlink socket (tests hand in one end of a socketpair).

    Calls come from one thread at a time; :meth:`close` from any thread at any
    time. After ``close()`` every call raises ``BackendError``.
    """

    def __init__(
        self,
        interface: str,
        *,
        max_message: int = nlwire.DEFAULT_MESSAGE,
        batch_bytes: int = 256 * 1024,
        connect: Connect | None = None,
    ) -> None:
        self._interface = interface
        self._max_message = max_message
        self._batch_bytes = max(batch_bytes, max_message)
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
    def max_peers(self) -> int:
        """The kernel module's limit on one interface (MAX_PEERS_PER_DEVICE)."""
        return MAX_PEERS

    # --- socket -------------------------------------------------------------

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

    # --- read ---------------------------------------------------------------

    def read(self) -> Device:
        """Dump the interface's key, port and peers (endpoints and statistics are dropped)."""
        t0 = time.monotonic()
        dev = self.dump(nlwire.DeviceDecoder, "read").device()
        log.debug(
            "wg_read interface=%s peers=%d ms=%d",
            self._interface,
            len(dev.peers),
            (time.monotonic() - t0) * 1000,
        )
        return dev

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

    def send_messages(self, msgs: Iterable[bytes], op: str) -> int:
        """Send SET_DEVICE messages (any sequence numbers) and check every ack; the count."""
        with self._call(op):
            return self._send_acked(self._socket(), msgs, op)

    @property
    def family(self) -> int:
        """The generic netlink family id of ``wireguard`` (resolved with the socket)."""
        with self._call("resolve"):
            self._socket()
            return self._family

    # --- apply --------------------------------------------------------------

    def apply(self, plan: Plan) -> None:
        """Send the plan, many peers a message; every message is acknowledged and checked.

        Messages are encoded in a second thread while this one waits in ``send``:
        the kernel applies a batch inside the system call, with the GIL released,
        so encoding the next batch costs no wall-clock time.
        """
        if plan.empty:
            return
        t0 = time.monotonic()
        with self._call("apply"):
            s = self._socket()
            messages = nlwire.iter_set_peers(
                self._family,
                self._interface,
                nlwire.iter_plan_ops(plan),
                seq=0,
                max_message=self._max_message,
            )
            with _Prefetch(messages) as prefetched:
                sent = self._send_acked(s, prefetched, "apply")
        log.debug(
            "wg_apply interface=%s added=%d updated=%d removed=%d messages=%d ms=%d",
            self._interface,
            len(plan.add),
            len(plan.update),
            len(plan.remove),
            sent,
            (time.monotonic() - t0) * 1000,
        )

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

    # --- setup --------------------------------------------------------------

    def setup(self, setup: InterfaceSetup) -> None:
        """Create the link if missing; set key and port where they differ; add addresses; up."""
        with self._call("setup"):
            self._setup(setup)

    def _setup(self, setup: InterfaceSetup) -> None:
        self._ensure_link()
        dev = self.read()
        # The kernel reports the clamped form of the key it stores.
        want_key = clamp_private_key(setup.private_key)
        key = want_key if dev.private_key != want_key else None
        port = setup.listen_port if dev.listen_port != setup.listen_port else None
        if key is not None or port is not None:
            s = self._socket()
            msg = nlwire.encode_set_identity(
                self._family, self._interface, private_key=key, listen_port=port, seq=0
            )
            self._send_acked(s, [msg], "setup")
        added = ensure_addresses_up(self._interface, setup.addresses)
        log.info(
            "wg_setup interface=%s key_set=%s port_set=%s addresses_added=%d",
            self._interface,
            key is not None,
            port is not None,
            added,
        )

    def _ensure_link(self) -> None:
        try:
            with IPRoute() as ipr:
                if ipr.link_lookup(ifname=self._interface):
                    return
                ipr.link("add", ifname=self._interface, kind="wireguard")
        except Exception as e:
            code = getattr(e, "code", None) or getattr(e, "errno", None)
            raise BackendError(f"{self._interface}: cannot create link (error {code})") from None
        log.info("wg_link_created interface=%s", self._interface)

    # --- scrubbing: one dump a pass, idle or not (privacy/scrub.py) ---------

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Peers with an endpoint and no handshake for ``idle_after`` s, as configured."""
        return KernelScrubPort(self).idle_peers(idle_after)

    def readd(self, peers: Sequence[Peer]) -> None:
        """Remove and re-add each peer in one message, which wipes its endpoint."""
        KernelScrubPort(self).readd(peers)

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

    def __enter__(self) -> KernelBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _with_seq(msg: bytes, seq: int) -> bytes:
    # Messages are encoded before their count is known, with sequence numbers
    # from 0, and renumbered here from the socket's own counter.
    return msg[:8] + _SEQ.pack(seq) + msg[12:]


class _Prefetch:
    """Runs an iterator in a worker thread, a bounded number of items ahead of the reader.

    Exceptions raised by the iterator are re-raised in the reader. Leaving the
    ``with`` block early (an error while sending) stops the worker.
    """

    _DONE = object()

    def __init__(self, source: Iterable[bytes], depth: int = 8) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="nl-encode", daemon=True)

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for item in self._source:
                if not self._put(item):
                    return
        except BaseException as e:  # handed to the reader, which re-raises it
            self._error = e
        self._put(self._DONE)

    def __iter__(self) -> Iterator[bytes]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                if self._error is not None:
                    raise self._error
                return
            assert isinstance(item, bytes)
            yield item

    def __enter__(self) -> _Prefetch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
