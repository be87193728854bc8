"""Scrubbing over generic netlink: idle peers from a GET_DEVICE dump, and re-adding peers.

The codec's dump decoder skips endpoints and handshake times on purpose; this module
reads exactly those two, reduces them to "has an endpoint" and "idle or not"
inside one call, and keeps neither. The same dump also carries each peer's
public key, preshared key and allowed IPs, so one dump a pass, whether or not
anyone is idle, yields the idle peers ready to be re-added. The conversation
itself is the backend's (:meth:`KernelBackend.dump`,
:meth:`KernelBackend.send_messages`, neither of which logs); the daemon never
runs a scrub and a reconcile on one backend at the same time.
"""

from __future__ import annotations

import errno
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Sequence

from nodeagent.core.idle import PeerActivity, handshake_age, is_idle, select_idle
from nodeagent.core.model import KEY_LEN, Peer, Plan
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.conversation import NetlinkConversation

Clock = Callable[[], float]

_TIMESPEC = struct.Struct("=qq")
# The first part of a peer as the kernel's GET_DEVICE writes it (codec.decode's
# fast path, with the handshake time read instead of skipped).
_ACTIVITY_FAST = struct.Struct("=HH32s HH32x HHqq HH4x HH8x HH8x HH4x")
_FAST_HEAD = (36, nlwire.WGPEER_A_PUBLIC_KEY)
_FAST_MID = (36, nlwire.WGPEER_A_PRESHARED_KEY, 20, nlwire.WGPEER_A_LAST_HANDSHAKE_TIME)
_FAST_TAIL = (
    6, nlwire.WGPEER_A_PERSISTENT_KEEPALIVE_INTERVAL, 12, nlwire.WGPEER_A_TX_BYTES,
    12, nlwire.WGPEER_A_RX_BYTES, 8, nlwire.WGPEER_A_PROTOCOL_VERSION,
)  # fmt: skip
# A whole peer element without an endpoint, as the kernel writes it: its header,
# that first part (nothing of it unpacked but the attribute headers), and the
# allowed IPs right after it, ending the element. Most peers of a large server.
_QUIET = struct.Struct("=HH HH32x HH32x HH16x HH4x HH8x HH8x HH4x HH")
_QUIET_FIXED = (*_FAST_HEAD, *_FAST_MID, *_FAST_TAIL)  # fields 2..15
_QUIET_HEAD_LEN = 4 + _ACTIVITY_FAST.size  # up to the allowed IPs


def _elements_to_read(buf: bytes, pos: int, end: int) -> Iterator[tuple[int, int]]:
    """The payload bounds of each peer element in ``buf[pos:end]`` (a WGDEVICE_A_PEERS payload)
    that may hold an endpoint: every element but those shaped as the kernel writes a
    peer without one, which are skipped with one ``unpack_from`` each.

    Bounds are checked as :func:`nlwire.iter_attrs` does (it is that walk, with
    the quiet peers left out): an element shorter than its header or running
    past ``end`` raises ``DecodeError``.
    """
    quiet, size = _QUIET.unpack_from, _QUIET.size
    header = nlwire.NLA_HDR.unpack_from
    allowed, mask = nlwire.WGPEER_A_ALLOWEDIPS, nlwire.NLA_TYPE_MASK
    while pos + 4 <= end:
        if pos + size <= end:
            r = quiet(buf, pos)
            n = r[0]
            if (
                r[2:16] == _QUIET_FIXED
                and r[17] & mask == allowed
                and r[16] >= 4
                and n == _QUIET_HEAD_LEN + r[16]
                and pos + n <= end
            ):
                pos += (n + 3) & ~3
                continue
        n = header(buf, pos)[0]
        if n < 4 or pos + n > end:
            raise nlwire.DecodeError("bad attribute length")
        yield pos + 4, pos + n
        pos += (n + 3) & ~3


class ActivityDecoder:
    """Accumulates the activity of each peer with an endpoint over the datagrams of one dump.

    Only a peer with an endpoint can be idle (``core.idle.is_idle``), and on a
    large server few have one: the others are skipped by the shape of their
    element (:func:`_elements_to_read`) and recorded nowhere.

    A peer split across messages repeats only its key and allowed IPs in the
    continuation, so the first element of a key is the one that counts: an
    element without a handshake time is such a continuation and records
    nothing, and a key already recorded keeps its first record.
    """

    def __init__(self, now: float) -> None:
        self._now = now
        self.peers: dict[bytes, PeerActivity] = {}  # peers with an endpoint only

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Decode one reply's genl payload (``buf[start:end]``)."""
        pos = start + nlwire.GENL_HDR.size
        if pos > end:
            raise nlwire.DecodeError("truncated genl header")
        for atype, a, b in nlwire.iter_attrs(buf, pos, end):
            if atype == nlwire.WGDEVICE_A_PEERS:
                for p, q in _elements_to_read(buf, a, b):
                    self._peer(buf, p, q)

    def _peer(self, buf: bytes, pos: int, end: int) -> bytes:
        """Record one peer element's activity if it is a key's first, with an endpoint; its key."""
        key: bytes | None = None
        endpoint = False
        first = False  # a peer's first element: it has its handshake time
        sec = nsec = 0
        # Fast path: the kernel's fixed first part (keys, handshake, keepalive,
        # counters, version), then the endpoint if it has one.
        if pos + _ACTIVITY_FAST.size <= end:
            r = _ACTIVITY_FAST.unpack_from(buf, pos)
            if r[:2] == _FAST_HEAD and r[3:7] == _FAST_MID and r[9:] == _FAST_TAIL:
                key, sec, nsec, first = r[2], r[7], r[8], True
                pos += _ACTIVITY_FAST.size
                if pos + 4 <= end:
                    alen, atype = nlwire.NLA_HDR.unpack_from(buf, pos)
                    allowed = atype & nlwire.NLA_TYPE_MASK == nlwire.WGPEER_A_ALLOWEDIPS
                    if allowed and pos + alen == end:
                        pos = end  # no endpoint: the rest is allowed IPs, not read here
        for atype, a, b in nlwire.iter_attrs(buf, pos, end):
            if atype == nlwire.WGPEER_A_PUBLIC_KEY:
                if b - a != KEY_LEN:
                    raise nlwire.DecodeError("bad public key length")
                key = buf[a:b]
            elif atype == nlwire.WGPEER_A_ENDPOINT:
                # A sockaddr_in or sockaddr_in6; the kernel omits it when unset.
                endpoint = b - a >= 2 and buf[a:b] != bytes(b - a)
            elif atype == nlwire.WGPEER_A_LAST_HANDSHAKE_TIME:
                if b - a != _TIMESPEC.size:
                    raise nlwire.DecodeError("bad handshake time length")
                sec, nsec = _TIMESPEC.unpack_from(buf, a)
                first = True
        if key is None:
            raise nlwire.DecodeError("peer without public key")
        if endpoint and first and key not in self.peers:
            self.peers[key] = PeerActivity(key, endpoint, handshake_age(sec, nsec, self._now))
        return key


class ScrubDecoder:
    """One dump read for the activity of the peers with an endpoint, and for the configuration
    of the idle ones.

    A peer without an endpoint costs one ``unpack_from`` (:func:`_elements_to_read`);
    the others' key, endpoint and handshake are read, and a peer's keys and
    allowed IPs are decoded into a ``Peer`` only if it is idle at
    ``idle_after`` (the least that :meth:`idle_peers` may be asked for), so a
    pass over 100,000 quiet peers builds none.
    """

    def __init__(self, now: float, idle_after: float = 0.0) -> None:
        self.activity = ActivityDecoder(now)
        self.config = nlwire.DeviceDecoder()
        self._idle_after = idle_after

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Decode one reply's genl payload (``buf[start:end]``)."""
        pos = start + nlwire.GENL_HDR.size
        if pos > end:
            raise nlwire.DecodeError("truncated genl header")
        record, peers, config = self.activity._peer, self.activity.peers, self.config.peer
        for atype, a, b in nlwire.iter_attrs(buf, pos, end):
            if atype == nlwire.WGDEVICE_A_PEERS:
                for p, q in _elements_to_read(buf, a, b):
                    # A continuation finds its peer's first record (or none).
                    activity = peers.get(record(buf, p, q))
                    if activity is not None and is_idle(activity, self._idle_after):
                        config(buf, p, q)

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """The idle peers with an endpoint, as configured (call after NLMSG_DONE)."""
        keys = select_idle(self.activity.peers.values(), idle_after)
        peers = self.config.device().peers
        return [peers[k] for k in keys if k in peers]


def idle_from_dump(
    datagrams: Iterable[bytes], seq: int, idle_after: float, now: float
) -> list[Peer]:
    """The idle peers with an endpoint in a complete dump answer, with their configuration.

    An errno answer or an interrupted dump (EINTR: retry) raises ``DumpError``;
    malformed bytes raise ``DecodeError``.
    """
    dec = ScrubDecoder(now, idle_after)
    for data in datagrams:
        for m in nlwire.iter_messages(data):
            if m.seq != seq:
                continue
            if m.type == nlwire.NLMSG_DONE:
                return dec.idle_peers(idle_after)
            if m.type == nlwire.NLMSG_ERROR:
                code = nlwire.error_code(data, m)
                if code:
                    raise DumpError(code)
                continue
            if m.flags & nlwire.NLM_F_DUMP_INTR:
                raise DumpError(errno.EINTR)
            dec.add(data, m.start, m.end)
    raise nlwire.DecodeError("dump ended without NLMSG_DONE")


class DumpError(Exception):
    """The kernel answered a dump with an errno (EINTR: interrupted, retry)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def readd_messages(family: int, ifname: str, peers: Sequence[Peer], seq: int) -> list[bytes]:
    """One SET_DEVICE message a peer: remove it, then add it again with the same configuration.

    The kernel applies one message under the device's lock, removal first: the
    re-created peer has no endpoint, no handshake and no counters.
    """
    out: list[bytes] = []
    for peer in peers:
        ops = [
            nlwire.PeerOp(peer.public_key, nlwire.WGPEER_F_REMOVE_ME, None, None),
            *nlwire.plan_ops(Plan(add=(peer,))),
        ]
        out.extend(
            nlwire.encode_set_peers(
                family, ifname, ops, seq=seq + len(out), max_message=nlwire.MAX_MESSAGE
            )
        )
    return out


class KernelScrubPort:
    """The scrubber's view of a kernel backend's netlink conversation."""

    def __init__(self, backend: NetlinkConversation, *, clock: Clock = time.time) -> None:
        self._backend = backend
        self._clock = clock

    @property
    def interface(self) -> str:
        return self._backend.interface

    def idle_peers(self, idle_after: float) -> list[Peer]:
        now = self._clock()
        dec = self._backend.dump(lambda: ScrubDecoder(now, idle_after), "scrub read")
        return dec.idle_peers(idle_after)

    def readd(self, peers: Sequence[Peer]) -> None:
        if peers:
            b = self._backend
            b.send_messages(readd_messages(b.family, b.interface, peers, seq=0), "scrub")
