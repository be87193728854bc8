"""Reading netlink: the messages in a datagram, an error's errno, and the one attribute walker.

Every decoder of kernel answers (the dump decoder here, the scrub reads in
``netlink.idle``) walks attributes with :func:`iter_attrs`, so the bounds
checks live in one place: a length shorter than a header or running past the
end of its container is a ``DecodeError``, never an ``IndexError`` or a read
into the next message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from nodeagent.wireguard.netlink.codec.constants import I32, NLA_HDR, NLA_TYPE_MASK, NLMSG_HDR


class DecodeError(ValueError):
    """A message from the kernel is malformed (never quotes its content)."""


def align(n: int) -> int:
    """``n`` rounded up to the 4-byte boundary netlink pads messages and attributes to."""
    return (n + 3) & ~3


class Message(NamedTuple):
    """One netlink message inside a received buffer: header fields and payload bounds."""

    type: int
    flags: int
    seq: int
    start: int  # first payload byte (after the netlink header)
    end: int


def iter_messages(buf: bytes) -> Iterator[Message]:
    """The netlink messages in one datagram."""
    pos, n = 0, len(buf)
    while pos + NLMSG_HDR.size <= n:
        length, mtype, flags, seq, _pid = NLMSG_HDR.unpack_from(buf, pos)
        if length < NLMSG_HDR.size or pos + length > n:
            raise DecodeError("truncated netlink message")
        yield Message(mtype, flags, seq, pos + NLMSG_HDR.size, pos + length)
        pos += align(length)


def error_code(buf: bytes, msg: Message) -> int:
    """The errno of an NLMSG_ERROR message (0 for an acknowledgement)."""
    if msg.end - msg.start < 4:
        raise DecodeError("truncated netlink error")
    return -int(I32.unpack_from(buf, msg.start)[0])


def iter_attrs(
    buf: bytes, pos: int, end: int, error: str = "bad attribute length"
) -> Iterator[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``buf[pos:end]``.

    The type has its flag bits (NLA_F_NESTED, NLA_F_NET_BYTEORDER) dropped.
    Fewer than a header's bytes left at the end are padding and ignored, as the
    kernel's ``nla_for_each_attr`` does. An attribute whose length is shorter
    than its header or runs past ``end`` raises ``DecodeError(error)``; nothing
    past ``end`` is ever read.
    """
    unpack = NLA_HDR.unpack_from
    while pos + 4 <= end:
        alen, atype = unpack(buf, pos)
        aend = pos + alen
        if alen < 4 or aend > end:
            raise DecodeError(error)
        yield atype & NLA_TYPE_MASK, pos + 4, aend
        pos += (alen + 3) & ~3
