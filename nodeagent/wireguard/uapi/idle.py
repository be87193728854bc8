"""Scrubbing over UAPI: which peers are idle, and re-adding peers in one ``set=1`` transaction.

Kept apart from ``uapi_text``, which on purpose never reads endpoints or
handshake times: here they are read, reduced to "has an endpoint" and "idle or
not", and dropped within one function call. The same ``get=1`` reply carries
each peer's configuration, so one request a pass, whether or not anyone is
idle, yields the idle peers ready to be re-added; only the idle peers'
configuration lines are parsed (the rest is the reconciler's to read).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from nodeagent.core.backend import BackendError
from nodeagent.core.idle import PeerActivity, handshake_age, is_idle
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


def idle_spans(lines: Sequence[str], idle_after: float, now: float) -> list[tuple[int, int]]:
    """Where each idle peer with an endpoint is in the body lines: ``lines[start:end]``.

    Every line is read for activity, every key is checked; a peer's
    configuration lines are left to the caller, which parses only the idle ones.
    """
    spans: list[tuple[int, int]] = []
    start = 0
    key: bytes | None = None
    endpoint = False
    sec = nsec = 0
    for i, line in enumerate([*lines, "public_key="]):  # the sentinel flushes the last peer
        name, sep, value = line.partition("=")
        if not sep:
            raise uapi_text.UapiProtocolError("reply has a line without '='")
        if name == "public_key":
            if key is not None and is_idle(
                PeerActivity(key, endpoint, handshake_age(sec, nsec, now)), idle_after
            ):
                spans.append((start, i))
            key, endpoint, sec, nsec, start = (_key(value) if value else None), False, 0, 0, i
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
    return spans


def idle_from_reply(text: str, idle_after: float, now: float) -> list[Peer]:
    """The idle peers with an endpoint in a whole ``get=1`` reply, with their configuration.

    The reply's errno must be 0. Every line is read for activity (and every
    device line and key is checked); only the idle peers' lines are then parsed
    into ``Peer`` values, so a pass over 60,000 quiet peers builds none.
    """
    lines, code = uapi_text.split_reply(text)
    if code:
        raise uapi_text.UapiProtocolError(f"get refused, errno {code}")
    spans = idle_spans(lines, idle_after, now)
    first = next((i for i, line in enumerate(lines) if line.startswith("public_key=")), len(lines))
    uapi_text.parse_device(lines[:first])  # the device's own lines, checked as a read does
    if not spans:
        return []
    peers = uapi_text.parse_device(
        itertools.chain.from_iterable(lines[a:b] for a, b in spans)
    ).peers
    keys = [_key(lines[a].partition("=")[2]) for a, _ in spans]
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
