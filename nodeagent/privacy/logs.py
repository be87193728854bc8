"""Logging setup: stdlib logging to stderr (journald), text or JSON, with redaction.

Code never logs a key, an address or a username; the ``RedactFilter`` is the
second line of defence and masks anything shaped like one anyway. It covers
every record the process emits, not only the agent's own: the handler sits on
the root logger, so aiohttp, asyncio, pyroute2 and the ``warnings`` module go
through it too. Libraries are held at ``warning`` whatever ``log.level`` says:
their debug output (pyroute2's message dumps) is not written for us.

Exceptions attached to records keep their type and where they were raised,
never a traceback. A library's exception text is dropped too: it may quote what
a client sent (aiohttp's "Error handling request" quotes the bad request line),
and that record's own message is redacted of the client's address.

:func:`protect_process` covers what does not go through ``logging``: writes to
``sys.stderr`` and ``sys.stdout`` pass a redacting stream, and uncaught
exceptions (main thread, other threads, unraisable ones, asyncio tasks) are
logged as one redacted line each instead of a traceback.
"""

from __future__ import annotations

import asyncio
import io
import ipaddress
import json
import logging
import os
import re
import sys
import threading
import traceback
from collections.abc import Mapping
from types import TracebackType
from typing import Any, TextIO

MASK = "[redacted]"
OWN = "nodeagent"
LIBRARY_LEVEL = logging.WARNING

# WireGuard keys: base64 of 32 bytes (43 characters whose last one carries 4
# zero bits, then "="; URL-safe and unpadded forms too), and hex of 32 bytes.
_KEYS = re.compile(
    r"(?<![A-Za-z0-9+/_-])(?:[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]|[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048])"
    r"(?:=|(?![A-Za-z0-9+/=_-]))"
    r"|(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])"
)
# IPv6 candidates: anything made of hex digits, colons and dots with at least
# two colons, with an optional zone, optionally in brackets with a port. Each
# candidate is checked by ``ipaddress``, so times (12:30:45) and MACs stay.
_V6 = re.compile(
    r"\[(?P<b>[0-9A-Fa-f:.]+(?:%[\w.-]+)?)\](?::\d{1,5})?"
    r"|(?<![0-9A-Za-z:.])(?P<a>[0-9A-Fa-f.]*:[0-9A-Fa-f.]*:[0-9A-Fa-f:.]*)(?:%[\w.-]+)?"
    r"(?![0-9A-Za-z:])"
)
# IPv4, with an optional port (a prefix length stays: it says nothing alone).
_V4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?::\d{1,5})?(?![\d.])")


def _v6(match: re.Match[str]) -> str:
    whole = match.group(0)
    candidate = (match.group("b") or match.group("a") or "").split("%", 1)[0]
    # A sentence may end right after an address: the full stop is not part of it.
    tail = "" if match.group("b") or "%" in whole else whole[len(whole.rstrip(".")) :]
    try:
        ipaddress.IPv6Address(candidate.rstrip(".") if tail else candidate)
    except ValueError:
        return whole
    return MASK + tail


def redact(text: str) -> str:
    """``text`` with every key- or address-shaped token replaced by a mask."""
    text = _KEYS.sub(MASK, text)
    text = _V6.sub(_v6, text)
    return _V4.sub(MASK, text)


def describe_exception(exc: BaseException) -> str:
    """An exception's type and the place it was raised: no message, no traceback text."""
    where = ""
    if exc.__traceback__ is not None:
        frame = traceback.extract_tb(exc.__traceback__)[-1]
        where = f" at {os.path.basename(frame.filename)}:{frame.lineno} in {frame.name}"
    return f"{type(exc).__name__}{where}"


def _own(record: logging.LogRecord) -> bool:
    return record.name == OWN or record.name.startswith(OWN + ".")


class RedactFilter(logging.Filter):
    """Renders each record once, redacts it, and freezes the result into the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception as e:  # a library's bad format string must not lose the line
            message = f"{record.msg!s} (unformattable: {type(e).__name__})"
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            # The agent's own exception texts name positions and interfaces; a
            # library's may quote what a client sent: its type and place only.
            detail = f": {exc}" if _own(record) else f" ({describe_exception(exc)})"
            message = f"{message} error={type(exc).__name__}{detail}"
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        )


class _AgentHandler(logging.StreamHandler[TextIO]):
    """The one handler :func:`setup_logging` installs (and replaces on a reload)."""


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Send every record of the process through one redacting handler on stderr.

    ``level`` applies to the agent's own loggers; libraries log warnings and
    worse only. The root logger's other handlers (a test's capture) are kept.
    """
    # Records are redacted by the filter: behind protect_process() they skip the
    # stream's second pass and go straight to the real stderr.
    stream = sys.stderr
    handler = _AgentHandler(stream.inner if isinstance(stream, RedactingStream) else stream)
    handler.addFilter(RedactFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # No timestamps: journald adds its own, and access times are not ours to keep.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    own = logging.getLogger(OWN)
    for logger in (root, own):
        for old in [h for h in logger.handlers if isinstance(h, _AgentHandler)]:
            logger.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(LIBRARY_LEVEL)
    own.setLevel(level.upper())
    own.propagate = True
    # warnings.warn() text goes through logging (py.warnings), not straight to stderr.
    logging.captureWarnings(True)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts what it is given, line by line, into another one.

    Whole lines are redacted at once, so a key written in two pieces is still
    seen whole; a partial line waits for its end or for ``flush``.
    """

    def __init__(self, inner: TextIO) -> None:
        super().__init__()
        self.inner = inner
        self._pending = ""
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.inner, "encoding", "utf-8")

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return self.inner.isatty()

    def fileno(self) -> int:
        return self.inner.fileno()

    def write(self, text: str) -> int:
        with self._lock:
            data = self._pending + text
            head, newline, self._pending = data.rpartition("\n")
            if newline:
                self.inner.write(redact(head + newline))
                self.inner.flush()
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self.inner.write(redact(self._pending))
                self._pending = ""
            self.inner.flush()


_crash_log = logging.getLogger(OWN + ".process")


def _excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        return
    exc.__traceback__ = tb
    _crash_log.critical("uncaught_exception error=%s", describe_exception(exc))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or isinstance(args.exc_value, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "unknown"
    _crash_log.error("thread_failed thread=%s error=%s", name, describe_exception(args.exc_value))


def _unraisablehook(info: Any) -> None:
    exc = info.exc_value
    _crash_log.warning(
        "unraisable_exception error=%s", "none" if exc is None else describe_exception(exc)
    )


def loop_exception_handler(loop: asyncio.AbstractEventLoop, context: Mapping[str, Any]) -> None:
    """The event loop's handler: asyncio's message and the exception's type, nothing of repr().

    asyncio's default handler writes the task's repr, which quotes the
    exception's text and the coroutine's arguments.
    """
    exc = context.get("exception")
    message = str(context.get("message", "unhandled exception in event loop")).splitlines()[0]
    _crash_log.error(
        "event_loop_error message=%s error=%s",
        message,
        "none" if not isinstance(exc, BaseException) else describe_exception(exc),
    )


def protect_process() -> None:
    """Make every other way the process writes text pass the same privacy rules.

    For the CLI, once, before anything runs: stdout and stderr become
    redacting streams, and uncaught exceptions are logged instead of printed.
    """
    if not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)
    if not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)
    sys.excepthook = _excepthook
    threading.excepthook = _thread_excepthook
    sys.unraisablehook = _unraisablehook
