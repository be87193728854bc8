"""Scrubbing over UAPI: which peers are idle, and re-adding peers in one ``set=1`` transaction.

Kept apart from ``uapi_text``, which on purpose never reads endpoints or
handshake times: here they are read, reduced to "has an endpoint" and "idle or
not", and dropped within one function call. The same ``get=1`` reply carries
each peer's configuration, so one request a pass, whether or not anyone is
idle, yields the idle peers ready to be re-added.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Protocol

from nodeagent.core.backend import BackendError
from nodeagent.core.idle import PeerActivity, handshake_age, select_idle
from nodeagent.core.model import KEY_LEN, Peer, Plan
from nodeagent.wireguard.uapi import text as uapi_text

Clock = Callable[[], float]


class UapiEndpoint(Protocol):
    """What the scrubber needs of a userspace backend: its socket and a way to talk to it."""

    @property
    def interface(self) -> str: ...

    @property
    def socket_path(self) -> str: ...

    def exchange(self, socket_path: str, request: bytes) -> str: ...


def _key(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise uapi_text.UapiProtocolError("reply has a key that is not hex") from None
    if len(raw) != KEY_LEN:
        raise uapi_text.UapiProtocolError("reply has a key of the wrong length")
    return raw


def parse_activity(lines: Iterable[str], now: float) -> Iterator[PeerActivity]:
    """Each peer's activity from the body lines of a ``get=1`` reply, ``now`` in Unix seconds."""
    key: bytes | None = None
    endpoint = False
    sec = nsec = 0
    for line in [*lines, "public_key="]:  # the sentinel flushes the last peer
        name, sep, value = line.partition("=")
        if not sep:
            raise uapi_text.UapiProtocolError("reply has a line without '='")
        if name == "public_key":
            if key is not None:
                yield PeerActivity(key, endpoint, handshake_age(sec, nsec, now))
            key, endpoint, sec, nsec = (_key(value) if value else None), False, 0, 0
        elif key is None:
            continue  # device-level lines
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


def idle_from_reply(text: str, idle_after: float, now: float) -> list[Peer]:
    """The idle peers with an endpoint in a whole ``get=1`` reply, with their configuration.

    The reply's errno must be 0. Its lines are parsed twice, for activity and
    for configuration, and both parses see every line whether or not a peer is idle.
    """
    lines, code = uapi_text.split_reply(text)
    if code:
        raise uapi_text.UapiProtocolError(f"get refused, errno {code}")
    keys = select_idle(parse_activity(lines, now), idle_after)
    peers = uapi_text.parse_device(lines).peers
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
        self._exchange = exchange_fn or backend.exchange  # close() reaches it

    @property
    def interface(self) -> str:
        return self._backend.interface

    def _request(self, request: bytes, op: str) -> str:
        try:
            return self._exchange(self._backend.socket_path, request)
        except OSError:
            raise BackendError(f"{self.interface}: {op} failed on the UAPI socket") from None

    def idle_peers(self, idle_after: float) -> list[Peer]:
        reply = self._request(uapi_text.GET_REQUEST, "scrub read")
        try:
            return idle_from_reply(reply, idle_after, self._clock())
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self.interface}: scrub read: {e}") from None

    def readd(self, peers: Sequence[Peer]) -> None:
        if not peers:
            return
        reply = self._request(uapi_text.set_request(readd_lines(peers)), "scrub")
        try:
            code = uapi_text.parse_set_reply(reply)
        except uapi_text.UapiProtocolError as e:
            raise BackendError(f"{self.interface}: scrub: {e}") from None
        if code:
            raise BackendError(f"{self.interface}: scrub refused, errno {code}")
