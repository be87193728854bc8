"""Interface byte counters from rtnetlink, and link speeds from sysfs.

Fetch and parse are split, as node_exporter's netdev collector does it:
:class:`LinkReader` asks the kernel for the configured links, :func:`decode_dump`
and :func:`parse_links` (pure) turn the answer into :class:`LinkCounters` and
are tested with literal messages. Only whole-interface counters are read;
nothing per peer, ever.

The 64-bit ``IFLA_STATS64`` counters are used, never the 32-bit ``IFLA_STATS``
ones: at 10 Gbit/s a 32-bit byte counter wraps every 3.4 seconds.

A sample is taken every second for the life of the agent, so it is made
cheap: one rtnetlink socket stays open, each configured link is asked for by
name (one ``RTM_GETLINK`` request, one message back, whatever else the host
has), and the request and the answer are packed and unpacked with ``struct``.
pyroute2's ``IPRoute`` cost about 1.4 ms of CPU a sample (an event loop per
call, its generic attribute machinery); this costs some tens of µs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import struct
import threading
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from typing import NamedTuple

from nodeagent.core.names import is_interface_name

__all__ = [
    "CounterError",
    "LinkCounters",
    "LinkMessage",
    "LinkReader",
    "decode_dump",
    "link_speed_bps",
    "parse_links",
]

NETLINK_ROUTE = 0
NLMSG_ERROR = 2
RTM_NEWLINK = 16
RTM_GETLINK = 18
NLM_F_REQUEST = 1
IFLA_IFNAME = 3
IFLA_STATS64 = 23
SYS_CLASS_NET = "/sys/class/net"

_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, port
_IFINFO = struct.Struct("=BxHiII")  # family, type, index, flags, change
_NLA = struct.Struct("=HH")
_I32 = struct.Struct("=i")
# struct rtnl_link_stats64 begins rx_packets, tx_packets, rx_bytes, tx_bytes (u64 each).
_STATS64_BYTES = struct.Struct("=16xQQ")
_RECV_SIZE = 65536  # one link's message is 1-3 KiB
_TIMEOUT = 5.0
_MAX_DATAGRAMS = 64  # stale answers drained before one request's own (a timed-out one's)


class CounterError(Exception):
    """The kernel could not be asked for link counters (the message names no interface data)."""


@dataclass(frozen=True, slots=True)
class LinkCounters:
    """One interface's identity and its 64-bit byte counters at one moment.

    ``ifindex`` tells a link that vanished and came back (its counters start
    again from zero) from the same link whose counter merely grew.
    """

    ifindex: int
    rx_bytes: int
    tx_bytes: int


class LinkMessage(NamedTuple):
    """What is read of one RTM_NEWLINK message.

    ``name`` is "" when the message has none; ``rx_bytes`` and ``tx_bytes`` are
    None when it has no ``IFLA_STATS64`` (or one too short to hold them).
    """

    ifindex: int
    name: str
    rx_bytes: int | None
    tx_bytes: int | None


def parse_links(messages: Iterable[LinkMessage], names: Collection[str]) -> dict[str, LinkCounters]:
    """Counters of the links named in ``names`` found among ``messages``.

    A link that is not among the messages is simply absent from the result:
    deciding what a missing interface means is the meter's job. Messages of
    other links, and links without 64-bit stats, are skipped.
    """
    found: dict[str, LinkCounters] = {}
    for msg in messages:
        if msg.name not in names or msg.rx_bytes is None or msg.tx_bytes is None:
            continue
        if msg.ifindex <= 0:
            continue
        found[msg.name] = LinkCounters(msg.ifindex, msg.rx_bytes, msg.tx_bytes)
    return found


def _messages(data: bytes | bytearray, size: int) -> Iterator[tuple[int, int, int, int]]:
    """(type, seq, payload start, end) of each netlink message in ``data[:size]``."""
    offset = 0
    while offset + _NLMSG.size <= size:
        length, kind, _flags, seq, _port = _NLMSG.unpack_from(data, offset)
        if length < _NLMSG.size or offset + length > size:
            raise ValueError("truncated netlink message")
        yield kind, seq, offset + _NLMSG.size, offset + length
        # Netlink messages are 4-byte aligned.
        offset += (length + 3) & ~3


def _link_message(data: bytes | bytearray, start: int, end: int) -> LinkMessage:
    """The index, name and 64-bit byte counters of the RTM_NEWLINK payload ``data[start:end]``.

    The first ``IFLA_IFNAME`` and the first ``IFLA_STATS64`` count. Raises
    ``ValueError`` for a payload shorter than ``struct ifinfomsg`` or an
    attribute shorter than its header or running past the message.
    """
    if end - start < _IFINFO.size:
        raise ValueError("truncated link message")
    index = _IFINFO.unpack_from(data, start)[2]
    name: str | None = None
    rx: int | None = None
    tx: int | None = None
    seen_stats = False
    pos = start + _IFINFO.size
    while pos + 4 <= end:  # fewer bytes left are padding
        alen, atype = _NLA.unpack_from(data, pos)
        if alen < 4 or pos + alen > end:
            raise ValueError("malformed link message")
        atype &= 0x3FFF  # NLA_F_NESTED, NLA_F_NET_BYTEORDER
        if atype == IFLA_IFNAME and name is None:
            raw = bytes(data[pos + 4 : pos + alen])
            name = raw.partition(b"\0")[0].decode("utf-8", "replace")
        elif atype == IFLA_STATS64 and not seen_stats:
            seen_stats = True
            if alen - 4 >= _STATS64_BYTES.size:
                rx, tx = _STATS64_BYTES.unpack_from(data, pos + 4)
        pos += (alen + 3) & ~3
    return LinkMessage(index, name or "", rx, tx)


def decode_dump(data: bytes | bytearray) -> list[LinkMessage]:
    """RTM_NEWLINK messages decoded from raw netlink bytes, as the kernel sends them.

    Other message types (NLMSG_DONE, errors) are skipped. Raises ``ValueError``
    on a truncated buffer or a malformed link message.
    """
    return [
        _link_message(data, start, end)
        for kind, _seq, start, end in _messages(data, len(data))
        if kind == RTM_NEWLINK
    ]


def _attr(atype: int, payload: bytes) -> bytes:
    n = _NLA.size + len(payload)
    return _NLA.pack(n, atype) + payload + bytes(-n % 4)


def getlink_request(name: str, seq: int) -> bytes:
    """An RTM_GETLINK request for the link named ``name`` (answered by one RTM_NEWLINK)."""
    body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _attr(IFLA_IFNAME, name.encode() + b"\0")
    return _NLMSG.pack(_NLMSG.size + len(body), RTM_GETLINK, NLM_F_REQUEST, seq, 0) + body


class LinkReader:
    """Reads link counters over one rtnetlink socket, optionally inside a named network namespace.

    Blocking: call :meth:`read` from one worker thread at a time, e.g.
    ``asyncio.to_thread(reader.read, names)``. The socket opens at the first
    read and stays open; after a failure it is dropped and the next call opens
    a fresh one.

    :meth:`close` may be called from any thread at any time, also while a read
    is in flight (a cancelled task's thread still runs): then the socket is
    closed by that read when it returns, never under it (its number could be
    reused by another socket meanwhile).
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._sock: socket.socket | None = None
        self._state = threading.Lock()  # guards the three fields below, held only briefly
        self._reading = False
        self._close_after_read = False
        self._seq = 0
        self._buf = bytearray(_RECV_SIZE)

    def read(self, names: Collection[str]) -> dict[str, LinkCounters]:
        """The counters of those of ``names`` that exist now; raises ``CounterError``."""
        with self._state:
            self._reading = True
            sock = self._sock
        failure: Exception | None = None
        found: dict[str, LinkCounters] = {}
        try:
            if sock is None:
                sock = self._open()
            # One request a name: the answer does not grow with the host's other
            # links, and a missing link is an ENODEV answer, not a failure.
            for name in names:
                msg = self._ask(sock, name)
                if msg is not None:
                    found.update(parse_links((msg,), (name,)))
        except Exception as e:  # any failure is a CounterError, and the socket is dropped
            failure = e
        with self._state:
            drop = failure is not None or self._close_after_read
            self._reading = self._close_after_read = False
            self._sock = None if drop else sock
        if drop:
            _close_quietly(sock)
        if failure is not None:
            raise CounterError(f"link read failed: {type(failure).__name__}") from None
        return found

    def _open(self) -> socket.socket:
        kind = socket.SOCK_RAW | socket.SOCK_CLOEXEC
        if self._netns:
            from pyroute2.netns import create_socket

            sock: socket.socket = create_socket(self._netns, socket.AF_NETLINK, kind, NETLINK_ROUTE)
        else:
            sock = socket.socket(socket.AF_NETLINK, kind, NETLINK_ROUTE)
        try:
            sock.bind((0, 0))
            sock.settimeout(_TIMEOUT)
        except OSError:
            sock.close()
            raise
        return sock

    def _ask(self, sock: socket.socket, name: str) -> LinkMessage | None:
        """The link named ``name``, or None if there is none."""
        if not is_interface_name(name):
            return None  # the kernel could hold no such link
        self._seq = seq = (self._seq + 1) & 0x7FFFFFFF
        sock.send(getlink_request(name, seq))
        buf = self._buf
        for _ in range(_MAX_DATAGRAMS):
            n = sock.recv_into(buf, len(buf), socket.MSG_TRUNC)
            if n > len(buf):
                raise ValueError("link message too large")
            for kind, mseq, start, end in _messages(buf, n):
                if mseq != seq:
                    continue  # the late answer to a request that timed out
                if kind == RTM_NEWLINK:
                    msg = _link_message(buf, start, end)
                    # Asked by name, the kernel also finds a link by an alternative
                    # name; only the link that bears it as its name counts.
                    return msg if msg.name == name else None
                if kind == NLMSG_ERROR:
                    if end - start < _I32.size:
                        raise ValueError("truncated netlink error")
                    code = -_I32.unpack_from(buf, start)[0]
                    if code == errno.ENODEV:
                        return None
                    if code == 0:
                        raise ValueError("an acknowledgement, not a link")
                    raise OSError(code, os.strerror(code))
        raise ValueError("no answer among the messages received")

    def close(self) -> None:
        """Close the socket now, or as soon as the read in flight returns."""
        with self._state:
            if self._reading:
                self._close_after_read = True
                return
            sock, self._sock = self._sock, None
        _close_quietly(sock)


def _close_quietly(sock: socket.socket | None) -> None:
    if sock is not None:
        # Closing a broken socket must not mask the failure that broke it.
        with contextlib.suppress(Exception):
            sock.close()


def link_speed_bps(name: str, sys_class_net: str = SYS_CLASS_NET) -> int | None:
    """The link's negotiated speed in bits per second, or None when the driver does not know.

    The kernel reports Mbit/s; -1 or an EINVAL on read (a link that is down, or
    a virtual link without a speed) mean unknown.
    """
    try:
        with open(os.path.join(sys_class_net, name, "speed"), "rb") as f:
            text = f.read(32).strip()
    except OSError:
        return None
    try:
        mbit = int(text)
    except ValueError:
        return None
    return mbit * 1_000_000 if mbit > 0 else None
