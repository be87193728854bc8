"""Interface byte counters from rtnetlink, and link speeds from sysfs.

Fetch and parse are split, as node_exporter's netdev collector does it:
:class:`LinkReader` asks the kernel for one link dump, :func:`parse_links` (pure)
turns the messages into :class:`LinkCounters` and is tested with literal
messages. Only whole-interface counters are read; nothing per peer, ever.

The 64-bit ``IFLA_STATS64`` counters are used, never the 32-bit ``IFLA_STATS``
ones: at 10 Gbit/s a 32-bit byte counter wraps every 3.4 seconds.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "CounterError",
    "LinkCounters",
    "LinkMessage",
    "LinkReader",
    "decode_dump",
    "link_speed_bps",
    "parse_links",
]

RTM_NEWLINK = 16
SYS_CLASS_NET = "/sys/class/net"


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


class LinkMessage(Protocol):
    """The part of a decoded RTM_NEWLINK message (pyroute2's ``ifinfmsg``) that is read here."""

    def __getitem__(self, key: str) -> Any: ...

    def get_attr(self, name: str) -> Any: ...


def parse_links(messages: Iterable[LinkMessage], names: Collection[str]) -> dict[str, LinkCounters]:
    """Counters of the links named in ``names`` found among ``messages``.

    A link that is not among the messages is simply absent from the result:
    deciding what a missing interface means is the meter's job. Messages of
    other links, and links without 64-bit stats, are skipped.
    """
    found: dict[str, LinkCounters] = {}
    for msg in messages:
        name = msg.get_attr("IFLA_IFNAME")
        if name not in names:
            continue
        stats = msg.get_attr("IFLA_STATS64")
        if stats is None:
            continue
        index = int(msg["index"])
        if index <= 0:
            continue
        try:
            rx, tx = int(stats["rx_bytes"]), int(stats["tx_bytes"])
        except (TypeError, KeyError, ValueError):
            # An attribute too short for the struct: pyroute2 hands over its raw bytes.
            continue
        found[name] = LinkCounters(index, rx, tx)
    return found


def decode_dump(data: bytes) -> list[LinkMessage]:
    """RTM_NEWLINK messages decoded from raw netlink bytes, as the kernel sends a dump.

    Other message types (NLMSG_DONE, errors) are skipped. Raises ``ValueError``
    on a truncated buffer.
    """
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    messages: list[LinkMessage] = []
    offset = 0
    while offset + 16 <= len(data):
        length = int.from_bytes(data[offset : offset + 4], "little")
        kind = int.from_bytes(data[offset + 4 : offset + 6], "little")
        if length < 16 or offset + length > len(data):
            raise ValueError("truncated netlink message")
        if kind == RTM_NEWLINK:
            if length < 32:  # the netlink header and struct ifinfomsg
                raise ValueError("truncated link message")
            msg = ifinfmsg(data[offset : offset + length])
            try:
                msg.decode()
            except Exception:
                # pyroute2's decoder fails on hostile bytes in ways of its own (struct.error,
                # KeyError, NetlinkNLADecodeError...): each means a malformed message.
                raise ValueError("malformed link message") from None
            messages.append(msg)
        # Netlink messages are 4-byte aligned.
        offset += (length + 3) & ~3
    return messages


class LinkReader:
    """Reads link counters over one rtnetlink socket, optionally inside a named network namespace.

    Blocking (pyroute2's synchronous API): call :meth:`read` from one worker
    thread at a time, e.g. ``asyncio.to_thread(reader.read, names)``. After a
    failure the socket is dropped and the next call opens a fresh one.

    :meth:`close` may be called from any thread at any time, also while a read
    is in flight (a cancelled task's thread still runs): then the socket is
    closed by that read when it returns. pyroute2's socket must not be closed
    under a running call: with pyroute2 0.9 the reading thread then waits
    forever, and a thread stuck in the default executor keeps the agent from
    exiting.
    """

    def __init__(self, netns: str | None = None) -> None:
        self._netns = netns
        self._ipr: Any = None
        self._state = threading.Lock()  # guards the three fields below, held only briefly
        self._reading = False
        self._close_after_read = False

    def read(self, names: Collection[str]) -> dict[str, LinkCounters]:
        """The counters of those of ``names`` that exist now; raises ``CounterError``."""
        with self._state:
            self._reading = True
            ipr = self._ipr
        failure: Exception | None = None
        try:
            if ipr is None:
                from pyroute2 import IPRoute

                ipr = IPRoute(netns=self._netns) if self._netns else IPRoute()
            # One dump of every link rather than one request per name: a single
            # round trip, and a missing link is an absent entry, not an error.
            messages = ipr.get_links()
        except Exception as e:
            failure = e
        with self._state:
            drop = failure is not None or self._close_after_read
            self._reading = self._close_after_read = False
            self._ipr = None if drop else ipr
        if drop:
            _close_quietly(ipr)
        if failure is not None:
            raise CounterError(f"link dump failed: {type(failure).__name__}") from None
        return parse_links(messages, names)

    def close(self) -> None:
        """Close the socket now, or as soon as the read in flight returns."""
        with self._state:
            if self._reading:
                self._close_after_read = True
                return
            ipr, self._ipr = self._ipr, None
        _close_quietly(ipr)


def _close_quietly(ipr: Any) -> None:
    if ipr is not None:
        # Closing a broken socket must not mask the failure that broke it.
        with contextlib.suppress(Exception):
            ipr.close()


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
