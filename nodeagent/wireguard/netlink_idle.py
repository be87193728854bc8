"""Scrubbing over generic netlink: idle peers from a GET_DEVICE dump, and re-adding peers.

``nlwire``'s decoder skips endpoints and handshake times on purpose; this module
reads exactly those two, reduces them to "has an endpoint" and "idle or not"
inside one call, and keeps neither. It opens its own short-lived netlink socket
per operation so that it shares no sequence numbers or buffers with
:class:`KernelBackend`, which may be mid-conversation in another thread.
"""

from __future__ import annotations

import errno
import socket
import struct
import time
from collections.abc import Callable, Iterable, Sequence

from ..model import KEY_LEN, Device, Peer, Plan
from ..privacy.scrub import PeerActivity, handshake_age, select_idle
from . import nlwire
from .backend import BackendError, InterfaceMissing
from .netlink import KernelBackend, resolve_family

Clock = Callable[[], float]

_TIMESPEC = struct.Struct("=qq")
_TIMEOUT = 60.0
_RECV_SIZE = 1 << 20
_BATCH_BYTES = 256 * 1024
_NETLINK_GENERIC = 16
_NETLINK_CAP_ACK = 10  # error replies quote only the request header
_SOL_NETLINK = 270
_DUMP_ATTEMPTS = 5


class ActivityDecoder:
    """Accumulates the activity of each peer over the datagrams of one dump.

    A peer split across messages repeats only its key and allowed IPs in the
    continuation, so the first element of a key is the one that counts.
    """

    def __init__(self, now: float) -> None:
        self._now = now
        self.peers: dict[bytes, PeerActivity] = {}

    def add(self, buf: bytes, start: int, end: int) -> None:
        """Decode one reply's genl payload (``buf[start:end]``)."""
        pos = start + nlwire.GENL_HDR.size
        if pos > end:
            raise nlwire.DecodeError("truncated genl header")
        for atype, a, b in _attrs(buf, pos, end):
            if atype == nlwire.WGDEVICE_A_PEERS:
                for _t, p, q in _attrs(buf, a, b):
                    self._peer(buf, p, q)

    def _peer(self, buf: bytes, pos: int, end: int) -> None:
        key: bytes | None = None
        endpoint = False
        sec = nsec = 0
        for atype, a, b in _attrs(buf, pos, end):
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
        if key is None:
            raise nlwire.DecodeError("peer without public key")
        if key not in self.peers:
            self.peers[key] = PeerActivity(key, endpoint, handshake_age(sec, nsec, self._now))


def _attrs(buf: bytes, pos: int, end: int) -> Iterable[tuple[int, int, int]]:
    """(type, payload start, payload end) of each attribute in ``buf[pos:end]``."""
    while pos + 4 <= end:
        alen, atype = nlwire.NLA_HDR.unpack_from(buf, pos)
        if alen < 4 or pos + alen > end:
            raise nlwire.DecodeError("bad attribute length")
        yield atype & 0x3FFF, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def idle_from_dump(
    datagrams: Iterable[bytes], seq: int, idle_after: float, now: float
) -> list[bytes]:
    """Keys of the idle peers with an endpoint in a complete dump answer.

    An errno answer or an interrupted dump (EINTR: retry) raises ``DumpError``;
    malformed bytes raise ``DecodeError``.
    """
    dec = ActivityDecoder(now)
    for data in datagrams:
        for m in nlwire.iter_messages(data):
            if m.seq != seq:
                continue
            if m.type == nlwire.NLMSG_DONE:
                return select_idle(dec.peers.values(), idle_after)
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
    """The scrubber's view of a :class:`KernelBackend`."""

    def __init__(self, backend: KernelBackend, *, clock: Clock = time.time) -> None:
        self._backend = backend
        self._clock = clock
        self._seq = int(time.monotonic() * 1000) & 0x3FFFFFFF

    @property
    def interface(self) -> str:
        return self._backend.interface

    def read(self) -> Device:
        return self._backend.read()

    def _open(self) -> tuple[socket.socket, int]:
        family = resolve_family()
        try:
            s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_GENERIC)
            s.bind((0, 0))
            s.settimeout(_TIMEOUT)
            s.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
        except OSError as e:
            raise BackendError(f"{self.interface}: netlink setup failed ({e.strerror})") from None
        return s, family

    def _fail(self, op: str, code: int) -> BackendError:
        if code == errno.ENODEV:
            return InterfaceMissing(f"{self.interface}: no such interface ({op})")
        return BackendError(f"{self.interface}: {op} failed ({errno.errorcode.get(code, code)})")

    def _next_seq(self, n: int = 1) -> int:
        seq = self._seq
        self._seq = (self._seq + n) & 0x3FFFFFFF
        return seq

    def idle_peers(self, idle_after: float) -> list[bytes]:
        s, family = self._open()
        with s:
            for _attempt in range(_DUMP_ATTEMPTS):
                seq = self._next_seq()
                try:
                    s.send(nlwire.encode_get_device(family, self.interface, seq=seq))
                    datagrams = _recv_until_done(s, seq)
                    return idle_from_dump(datagrams, seq, idle_after, self._clock())
                except DumpError as e:
                    if e.code in (errno.EINTR, errno.EBUSY, errno.EAGAIN):
                        continue
                    raise self._fail("scrub read", e.code) from None
                except nlwire.DecodeError as e:
                    raise BackendError(
                        f"{self.interface}: scrub read got a bad reply ({e})"
                    ) from None
                except OSError as e:
                    raise BackendError(
                        f"{self.interface}: scrub read failed ({e.strerror or 'timed out'})"
                    ) from None
        raise BackendError(f"{self.interface}: scrub read kept being interrupted")

    def readd(self, peers: Sequence[Peer]) -> None:
        if not peers:
            return
        s, family = self._open()
        with s:
            msgs = readd_messages(family, self.interface, peers, seq=0)
            seq0 = self._next_seq(len(msgs))
            first_error = 0
            try:
                i = 0
                while i < len(msgs):
                    batch: list[bytes] = []
                    size = 0
                    while i < len(msgs) and (not batch or size + len(msgs[i]) <= _BATCH_BYTES):
                        batch.append(_with_seq(msgs[i], (seq0 + i) & 0x3FFFFFFF))
                        size += len(msgs[i])
                        i += 1
                    pending = {(seq0 + i - len(batch) + k) & 0x3FFFFFFF for k in range(len(batch))}
                    s.send(b"".join(batch))
                    while pending:
                        data = s.recv(_RECV_SIZE)
                        for m in nlwire.iter_messages(data):
                            if m.type != nlwire.NLMSG_ERROR or m.seq not in pending:
                                continue
                            pending.discard(m.seq)
                            code = nlwire.error_code(data, m)
                            first_error = first_error or code
            except nlwire.DecodeError as e:
                raise BackendError(f"{self.interface}: scrub got a bad reply ({e})") from None
            except OSError as e:
                raise BackendError(
                    f"{self.interface}: scrub failed ({e.strerror or 'timed out'})"
                ) from None
        if first_error:
            raise self._fail("scrub", first_error)


def _recv_until_done(s: socket.socket, seq: int) -> list[bytes]:
    out: list[bytes] = []
    while True:
        data = s.recv(_RECV_SIZE)
        out.append(data)
        for m in nlwire.iter_messages(data):
            if m.seq != seq:
                continue
            if m.type == nlwire.NLMSG_DONE:
                return out
            if m.type == nlwire.NLMSG_ERROR and nlwire.error_code(data, m):
                return out


def _with_seq(msg: bytes, seq: int) -> bytes:
    return msg[:8] + struct.pack("=I", seq) + msg[12:]
