"""Logging setup: stdlib logging to stderr (journald), text or JSON, with redaction.

Code never logs a key, an address or a username; the ``RedactFilter`` is the
second line of defence and masks anything shaped like one anyway.
"""

from __future__ import annotations

import json
import logging
import re
import sys

_PATTERNS = [
    # WireGuard keys: base64 of 32 bytes, and hex of 32 bytes.
    re.compile(r"(?<![A-Za-z0-9+/])[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=(?![A-Za-z0-9+/=])"),
    re.compile(r"(?<![0-9A-Fa-f])[0-9A-Fa-f]{64}(?![0-9A-Fa-f])"),
    # IPv4 addresses, with or without a prefix length or port.
    re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?![\d.])"),
    # IPv6: at least two colon-separated hex groups around a '::', or eight groups.
    re.compile(
        r"(?<![0-9A-Fa-f:])(?:(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
        r"|(?:[0-9A-Fa-f]{1,4}:){0,7}(?::[0-9A-Fa-f]{1,4}){1,7}"
        r"|(?:[0-9A-Fa-f]{1,4}:){1,7}:)(?![0-9A-Fa-f:])"
    ),
]
MASK = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every key- or address-shaped token replaced by a mask."""
    for pattern in _PATTERNS:
        text = pattern.sub(MASK, text)
    return text


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
