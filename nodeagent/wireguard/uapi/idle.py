"""Scrubbing over UAPI: which peers are idle, and re-adding peers in one ``set=1`` transaction.

Kept apart from ``uapi_text``, which on purpose never reads endpoints or
handshake times: here they are read, reduced to "has an endpoint" and "idle or
not", and dropped within one function call. The same ``get=1`` reply carries
each peer's configuration, so one request a pass, whether or not anyone is
idle, yields the idle peers ready to be re-added; only the idle peers'
configuration lines are parsed (the rest is the reconciler's to read).

Only a peer with an endpoint can be idle, and wireguard-go writes an
``endpoint=`` line only for a peer that has one: the reply is searched for
those lines at C speed, and only their peers' lines are read at all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from nodeagent.core.backend import BackendError
from nodeagent.core.idle import PeerActivity, handshake_age, is_idle
from nodeagent.core.model import KEY_LEN, Peer, Plan
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.segments import PEER_MARK, peer_segments, with_last

Clock = Callable[[], float]

_PEER_LINE = PEER_MARK
_ENDPOINT_LINE = "\nendpoint="


class UapiEndpoint(Protocol):
    """What the scrubber needs of a userspace backend: its socket and a way to talk to it."""

    @property
    def interface(self) -> str: ...

    @property
    def socket_path(self) -> str: ...

    def chunks(self, socket_path: str, request: bytes) -> Iterator[str]: ...


def _key(value: str) -> bytes:
    if len(value) != 64:
        raise uapi_text.UapiProtocolError("reply has a key of the wrong length")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise uapi_text.UapiProtocolError("reply has a key that is not hex") from None
    if len(raw) != KEY_LEN:  # fromhex() skips spaces: 64 characters may be fewer bytes
        raise uapi_text.UapiProtocolError("reply has a key of the wrong length")
    return raw


def body_end(text: str) -> int:
    """Where the body of a whole reply ends (-1: no body); its ``errno`` line is checked.

    The body is ``text[:end]``; what follows is ``\nerrno=N\n\n``. Raises
    ``UapiProtocolError`` for a malformed ending (as ``split_reply`` does) or
    a non-zero errno.
    """
    if not text.endswith("\n\n"):
        raise uapi_text.UapiProtocolError("reply does not end with a blank line")
    end = text.rfind("\n", 0, len(text) - 2)
    # Only the last line is split off: the whole reply is never cut into lines here.
    code = uapi_text.split_reply(text[end + 1 :])[1]
    if code:
        raise uapi_text.UapiProtocolError(f"get refused, errno {code}")
    return end


def endpoint_blocks(text: str, start: int, end: int) -> Iterator[tuple[int, int]]:
    """``(a, b)`` of each peer block in ``text[start:end]`` that has an ``endpoint=`` line.

    A block is a peer's lines, ``text[a:b]``: from its ``public_key=`` line up to
    the next one (or ``end``). ``text[start:end]`` must begin with a
    ``public_key=`` line, or with the newline before one. The search runs at C
    speed (``str.find``/``rfind``); only the blocks found are ever looked at, so
    a reply of 100,000 peers of which a few hundred have an endpoint costs a
    scan of the text and a few hundred short slices. An ``endpoint=`` line may
    stand anywhere in its block; a block with several is yielded once.
    """
    find, rfind = text.find, text.rfind
    pos = start
    while True:
        hit = find(_ENDPOINT_LINE, pos, end)
        if hit < 0:
            return
        # The block's public_key line: the last one before the hit. None but the
        # block's first line can be one (the block ends at the next), and there is
        # one before every hit at or past ``start``.
        a = rfind(_PEER_LINE, start, hit) + 1
        b = find(_PEER_LINE, hit, end)
        if b < 0:
            b = end
        yield a, b
        pos = b


def _idle_key(lines: Sequence[str], idle_after: float, now: float) -> bytes | None:
    """The key of the peer block ``lines`` if it is idle (with an endpoint), else None.

    Its handshake time is read, compared and dropped here: it lives only in
    this call's local variables.
    """
    key = b""
    endpoint = False
    sec = nsec = 0
    for line in lines:
        name, sep, value = line.partition("=")
        if not sep:
            raise uapi_text.UapiProtocolError("reply has a line without '='")
        if name == "public_key":  # the block's first line, and only that
            key = _key(value)
        elif name == "endpoint":
            endpoint = bool(value)
        elif name in ("last_handshake_time_sec", "last_handshake_time_nsec"):
            # A u64 has at most 20 digits (a longer number overflows a float below);
            # isascii: isdigit() also takes "²", which int() refuses.
            if not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise uapi_text.UapiProtocolError("reply has a malformed handshake time")
            if name == "last_handshake_time_sec":
                sec = int(value)
            else:
                nsec = int(value)
    if is_idle(PeerActivity(key, endpoint, handshake_age(sec, nsec, now)), idle_after):
        return key
    return None


def idle_from_reply(text: str, idle_after: float, now: float) -> list[Peer]:
    """The idle peers with an endpoint in a whole ``get=1`` reply, with their configuration."""
    return idle_from_segments((text,), idle_after, now)


def idle_from_segments(segments: Iterable[str], idle_after: float, now: float) -> list[Peer]:
    """:func:`idle_from_reply` of a reply given as ``segments.peer_segments`` cut it.

    The reply's ending (``errno`` must be 0) and the device's own lines are
    checked as a read does. Peers are found by their ``endpoint=`` lines
    (:func:`endpoint_blocks`): wireguard-go writes none for a peer that has
    none, and only a peer with an endpoint can be idle. Each such block is read
    whole for activity (its key, every line, the handshake times checked); only
    the idle ones are parsed into ``Peer`` values, so a pass over 100,000 quiet
    peers builds none and splits no line of theirs.

    The lines of peers without an endpoint are not read at all: a malformed
    key, handshake time or line there is not noticed by this read (the
    reconciler's read of the same interface, ``uapi_text.parse_get_reply``,
    refuses it). Nothing follows from them either: such a peer is never
    returned, so never re-added.
    """
    idle: list[str] = []
    keys: dict[bytes, None] = {}  # in reply order, each once
    first = True
    for segment, last in with_last(segments):
        end = body_end(segment) if last else len(segment)
        start = 0
        if first:
            first = False
            if end < 0:
                return []  # "errno=0" alone: no device lines, no peers
            if not segment.startswith(_PEER_LINE[1:]):
                start = segment.find(_PEER_LINE, 0, end)
                if start < 0:
                    start = end
                # The device's own lines, checked as a read does (an empty line included).
                uapi_text.parse_device(segment[:start].split("\n"))
        for a, b in endpoint_blocks(segment, start, end):
            lines = segment[a:b].split("\n")
            key = _idle_key(lines, idle_after, now)
            if key is not None:
                idle += lines
                keys[key] = None
    if first:
        body_end("")  # no text at all: refused as an empty reply is
    if not keys:
        return []
    peers = uapi_text.parse_device(idle).peers
    return [peers[k] for k in keys if k in peers]


def readd_lines(peers: Sequence[Peer]) -> list[str]:
    """``set=1`` lines that remove each peer and at once add it again, peer after peer.

    The daemon runs the whole request under its configuration lock, and a
    ``public_key`` line after ``remove=true`` creates a fresh peer: no endpoint,
    no handshake, no counters, the same key, preshared key and routes.
    """
    out: list[str] = []
    for peer in peers:
        out.append(f"public_key={peer.public_key.hex()}")
        out.append("remove=true")
        out.extend(uapi_text.plan_lines(Plan(add=(peer,))))
    return out


class UapiScrubPort:
    """The scrubber's view of a userspace backend (one connection per operation)."""

    def __init__(
        self,
        backend: UapiEndpoint,
        *,
        clock: Clock = time.time,
        exchange_fn: Callable[[str, bytes], str] | None = None,
    ) -> None:
        self._backend = backend
        self._clock = clock
        self._chunks: Callable[[str, bytes], Iterable[str]] = (
            backend.chunks if exchange_fn is None else lambda p, r: (exchange_fn(p, r),)
        )  # close() reaches the backend's connections

    @property
    def interface(self) -> str:
        return self._backend.interface

    def idle_peers(self, idle_after: float) -> list[Peer]:
        """Read as the reply arrives: a peer's lines at a time, never the whole reply."""
        try:
            segments = peer_segments(self._chunks(self._backend.socket_path, uapi_text.GET_REQUEST))
            return idle_from_segments(segments, idle_after, self._clock())
        except OSError:
            raise BackendError(f"{self.interface}: scrub read failed on the UAPI socket") from None
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self.interface}: scrub read: {e}") from None

    def readd(self, peers: Sequence[Peer]) -> None:
        if not peers:
            return
        try:
            reply = "".join(
                self._chunks(self._backend.socket_path, uapi_text.set_request(readd_lines(peers)))
            )
        except OSError:
            raise BackendError(f"{self.interface}: scrub failed on the UAPI socket") from None
        try:
            code = uapi_text.parse_set_reply(reply)
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self.interface}: scrub: {e}") from None
        if code:
            raise BackendError(f"{self.interface}: scrub refused, errno {code}")
