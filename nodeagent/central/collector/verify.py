"""Verification of a signed push (docs/push.md). Pure: the caller passes the time.

Order matters: the signature is checked before anything else about the
request is believed, so an unauthenticated sender learns nothing from the
answer beyond "refused"; the timestamp window and the replay check then use
the authenticated timestamp.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

__all__ = [
    "MAX_SKEW_SECONDS",
    "Refused",
    "ReplayGuard",
    "verify_push",
]

MAX_SKEW_SECONDS = 300
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})")


class Refused(Exception):
    """A push the collector must not accept. ``code`` is a short reason; ``status`` an HTTP code."""

    def __init__(self, code: str, status: int = 401) -> None:
        super().__init__(code)
        self.code = code
        self.status = status


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise Refused(f"missing_{name.lower().removeprefix('x-nodeagent-')}", 400)
    return value


def verify_push(
    headers: Mapping[str, str],
    body: bytes,
    *,
    secret_for: Callable[[str], bytes | None],
    now: float,
    last_accepted: Callable[[str], int | None],
    max_skew: int = MAX_SKEW_SECONDS,
) -> tuple[str, int]:
    """(node, timestamp) of a valid push; raises :class:`Refused` otherwise.

    ``headers`` must look names up case-insensitively (aiohttp's do).
    ``secret_for`` gives a node's secret (None: unknown node);
    ``last_accepted`` the newest timestamp already accepted from it. Nothing is
    recorded here: after storing the push, the caller records the timestamp
    (see :class:`ReplayGuard`).
    """
    node = _header(headers, "X-Nodeagent-Node")
    ts_text = _header(headers, "X-Nodeagent-Timestamp")
    sig_text = _header(headers, "X-Nodeagent-Signature")
    secret = secret_for(node)
    match = _SIGNATURE.fullmatch(sig_text.strip())
    if secret is None or match is None or not _TIMESTAMP.fullmatch(ts_text):
        # One answer for an unknown node and a malformed header: no probing for names.
        raise Refused("bad_signature")
    expected = hmac.new(secret, f"{ts_text}\n".encode("ascii") + body, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, bytes.fromhex(match.group(1))):
        raise Refused("bad_signature")
    ts = int(ts_text)
    if abs(now - ts) > max_skew:
        raise Refused("timestamp_out_of_window")
    last = last_accepted(node)
    if last is not None and ts <= last:
        raise Refused("replay", 409)
    return node, ts


@dataclass
class ReplayGuard:
    """The newest accepted timestamp per node, plus the secrets: state for :func:`verify_push`."""

    secrets: Mapping[str, bytes]
    last: dict[str, int] = field(default_factory=dict)

    def verify(
        self, headers: Mapping[str, str], body: bytes, now: float, max_skew: int = MAX_SKEW_SECONDS
    ) -> tuple[str, int]:
        """Verify and, when valid, record the timestamp at once (single-threaded callers)."""
        node, ts = verify_push(
            headers,
            body,
            secret_for=self.secrets.get,
            now=now,
            last_accepted=self.last.get,
            max_skew=max_skew,
        )
        self.last[node] = ts
        return node, ts
