"""OpenVPN's management protocol, pure: bytes in, events out, and commands out.

:class:`Parser` takes what the socket gives, in pieces of any size, and turns
it into :data:`Event` values: the password prompt (which ends without a
newline), ``SUCCESS:``/``ERROR:`` replies to the one command in flight, and
``>`` notifications. A ``>CLIENT:CONNECT``/``REAUTH``/``ESTABLISHED``/
``DISCONNECT`` header opens a block whose ``>CLIENT:ENV,`` lines are collected
up to ``>CLIENT:ENV,END``; only the keys the authentication decision needs
(:data:`KEPT_ENV`) are kept, and every other one (``untrusted_ip``,
``trusted_ip``, their ``_ip6`` and ``_port`` variants, ``IV_HWADDR``, ...) is
dropped as its line is read, before anything else sees the block.
``>CLIENT:ADDRESS`` (a tunnel address) keeps only its client id. The content
of every other notification (``>LOG``, ``>BYTECOUNT``, ``>STATE``,
``>INFO``, ...) is dropped too: only its kind is reported.

A line longer than :data:`MAX_LINE` is a :class:`LineTooLong` event, and the
parser skips to the next newline (resync). A block cut off by a disconnect,
or by a new header before its ``END``, is a :class:`BlockCut`.

Nothing here logs; an event's ``repr`` holds no username or password.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = [
    "KEPT_ENV",
    "MAX_ENV_LINES",
    "MAX_LINE",
    "PASSWORD_PROMPT",
    "BlockCut",
    "ClientAuth",
    "ClientDisconnect",
    "ClientEstablished",
    "Event",
    "Hold",
    "LineTooLong",
    "Notification",
    "Parser",
    "PasswordPrompt",
    "ProtocolViolation",
    "Reply",
    "command",
    "quote",
]

MAX_LINE = 64 << 10
#: ENV lines one block may carry before it is refused (OpenVPN sends about 40).
MAX_ENV_LINES = 1024
PASSWORD_PROMPT = b"ENTER PASSWORD:"
#: The only ENV keys that survive parsing: what the decision needs.
KEPT_ENV = frozenset({"username", "password", "common_name"})
_KIND = re.compile(rb"[A-Z][A-Z0-9_-]{0,31}\Z")


# --- events --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PasswordPrompt:
    """``ENTER PASSWORD:``: the management password is asked for."""


@dataclass(frozen=True, slots=True)
class Reply:
    """``SUCCESS: ...`` or ``ERROR: ...``: the answer to the command in flight.

    ``text`` may name a common name (``kill`` answers with it): never log it.
    """

    ok: bool
    text: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Hold:
    """``>HOLD:``: OpenVPN waits for ``hold release``."""


@dataclass(frozen=True, slots=True)
class Notification:
    """Any other ``>KIND:`` line; its content is dropped, its kind kept (or ``UNKNOWN``)."""

    kind: str


@dataclass(frozen=True, slots=True)
class ClientAuth:
    """A complete ``>CLIENT:CONNECT`` or ``>CLIENT:REAUTH`` block: a login to decide."""

    reauth: bool
    cid: int
    kid: int
    username: str | None = field(repr=False)
    password: bytes | None = field(repr=False)
    common_name: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientEstablished:
    """A complete ``>CLIENT:ESTABLISHED`` block: the session ``cid`` is up."""

    cid: int
    username: str | None = field(repr=False)
    common_name: str | None = field(repr=False)


@dataclass(frozen=True, slots=True)
class ClientDisconnect:
    """A complete ``>CLIENT:DISCONNECT`` block: the session ``cid`` is gone."""

    cid: int


@dataclass(frozen=True, slots=True)
class LineTooLong:
    """A line over :data:`MAX_LINE`; it was skipped up to its newline."""


@dataclass(frozen=True, slots=True)
class BlockCut:
    """A ``>CLIENT:`` block that never reached ``ENV,END``; it was dropped."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """A line that is none of the above (``what`` is a fixed phrase, never input text)."""

    what: str


Event = (
    PasswordPrompt
    | Reply
    | Hold
    | Notification
    | ClientAuth
    | ClientEstablished
    | ClientDisconnect
    | LineTooLong
    | BlockCut
    | ProtocolViolation
)

_BLOCK_KINDS = {b"CONNECT", b"REAUTH", b"ESTABLISHED", b"DISCONNECT", b"CR_RESPONSE"}


@dataclass(slots=True)
class _Block:
    kind: bytes
    cid: int
    kid: int
    env: dict[str, bytes] = field(default_factory=dict)
    lines: int = 0


def _int(text: bytes) -> int | None:
    # isdigit on bytes is ASCII only; a bound keeps int() cheap.
    return int(text) if text.isdigit() and len(text) <= 12 else None


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("utf-8", "replace")


class Parser:
    """Turns the management socket's bytes into events; one per connection."""

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self._max_line = max_line
        self._buf = bytearray()
        self._skipping = False  # inside a line over the bound: drop up to its newline
        self._block: _Block | None = None

    def feed(self, data: bytes) -> list[Event]:
        """The events completed by ``data``; a partial line waits for the next call."""
        out: list[Event] = []
        self._buf += data
        while True:
            if not self._skipping and self._buf.startswith(PASSWORD_PROMPT):
                # The prompt is the only text that ends without a newline; what may
                # follow it is read as a line of its own, however the bytes were split.
                del self._buf[: len(PASSWORD_PROMPT)]
                out.append(PasswordPrompt())
                continue
            nl = self._buf.find(b"\n")
            if nl < 0:
                break
            line = bytes(self._buf[:nl])
            del self._buf[: nl + 1]
            if self._skipping:
                self._skipping = False
                continue
            if len(line) > self._max_line:
                out.append(LineTooLong())
                continue
            self._line(line[:-1] if line.endswith(b"\r") else line, out)
        if self._skipping:
            self._buf.clear()
        elif len(self._buf) > self._max_line:
            self._buf.clear()
            self._skipping = True
            out.append(LineTooLong())
        return out

    def close(self) -> list[Event]:
        """The connection ended: an open block is cut, a partial line dropped."""
        self._buf.clear()
        self._skipping = False
        if self._block is not None:
            self._block = None
            return [BlockCut()]
        return []

    def _line(self, line: bytes, out: list[Event]) -> None:
        if line.startswith(b">CLIENT:"):
            self._client(line[8:], out)
        elif line.startswith(b">"):
            kind, sep, _ = line[1:].partition(b":")
            if not sep:
                out.append(ProtocolViolation("notification without a colon"))
            elif kind == b"HOLD":
                out.append(Hold())
            else:
                out.append(Notification(kind.decode() if _KIND.match(kind) else "UNKNOWN"))
        elif line.startswith(b"SUCCESS:"):
            out.append(Reply(True, _text(line[8:].strip()) or ""))
        elif line.startswith(b"ERROR:"):
            out.append(Reply(False, _text(line[6:].strip()) or ""))
        elif line.strip():
            out.append(ProtocolViolation("line that is neither a reply nor a notification"))

    def _client(self, rest: bytes, out: list[Event]) -> None:
        kind, _, args = rest.partition(b",")
        if kind == b"ENV":
            self._env(args, out)
            return
        if kind not in _BLOCK_KINDS:
            # ADDRESS carries a tunnel address, and whatever else comes later may carry one.
            out.append(Notification("CLIENT"))
            return
        if self._block is not None:
            self._block = None
            out.append(BlockCut())
        parts = args.split(b",")
        cid = _int(parts[0])
        kid = _int(parts[1]) if len(parts) > 1 else 0
        if cid is None or kid is None:
            out.append(ProtocolViolation("client header without numeric ids"))
            return
        self._block = _Block(kind, cid, kid)

    def _env(self, args: bytes, out: list[Event]) -> None:
        block = self._block
        if block is None:
            out.append(ProtocolViolation("client environment outside a block"))
            return
        if args == b"END":
            self._block = None
            event = _finish(block)
            if event is not None:
                out.append(event)
            return
        block.lines += 1
        if block.lines > MAX_ENV_LINES:
            self._block = None
            out.append(BlockCut())
            return
        key, sep, value = args.partition(b"=")
        name = key.decode("ascii", "replace")
        # Every other key (addresses, ports, hardware address, peer info) goes here, unread.
        if sep and name in KEPT_ENV:
            block.env[name] = value


def _finish(block: _Block) -> Event | None:
    env = block.env
    if block.kind in (b"CONNECT", b"REAUTH"):
        return ClientAuth(
            reauth=block.kind == b"REAUTH",
            cid=block.cid,
            kid=block.kid,
            username=_text(env.get("username")),
            password=env.get("password"),
            common_name=_text(env.get("common_name")),
        )
    if block.kind == b"ESTABLISHED":
        return ClientEstablished(
            block.cid, _text(env.get("username")), _text(env.get("common_name"))
        )
    if block.kind == b"DISCONNECT":
        return ClientDisconnect(block.cid)
    return Notification("CLIENT")  # CR_RESPONSE: challenge/response, which the agent does not use


# --- commands -------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z0-9._@+\-/:=,]+\Z")


def quote(arg: str) -> str:
    """One argument as OpenVPN's command parser reads it back; ValueError for a line break.

    Plain words go as they are; anything else in double quotes, with ``\\`` and
    ``"`` escaped by a backslash.
    """
    if "\n" in arg or "\r" in arg or "\0" in arg:
        raise ValueError("a management command argument cannot hold a line break or NUL")
    if _PLAIN.match(arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def command(*words: str | int) -> bytes:
    """A command line, each argument quoted, with its newline."""
    return (" ".join(quote(str(w)) for w in words) + "\n").encode()
