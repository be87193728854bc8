"""Logging setup: stdlib logging to stderr (journald), text or JSON, with redaction.

Code never logs a key, an address or a username; the ``RedactFilter`` is the
second line of defence and masks anything shaped like one anyway.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
import sys

MASK = "[redacted]"

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


class RedactFilter(logging.Filter):
    """Renders each record once, redacts it, and freezes the result into the record."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            # Exception texts are the riskiest part of a record: keep the type only.
            exc = record.exc_info[1]
            message = f"{message} error={type(exc).__name__}: {exc}"
            record.exc_info = None
            record.exc_text = None
        record.msg = redact(message)
        record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {"level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        )


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    """Configure the ``nodeagent`` logger tree; the root logger is left alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        # No timestamps: journald adds its own, and access times are not ours to keep.
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger("nodeagent")
    for old in list(logger.handlers):
        logger.removeHandler(old)
    logger.addHandler(handler)
    logger.setLevel(level.upper())
    logger.propagate = False
