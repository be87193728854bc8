"""Durations, rates and sizes as operators write them: ``30s``, ``1Gbit``, ``256MiB``.

Every parser raises ``ValueError`` with a message that says what to write
instead, because these messages end up in front of an operator as
``FILE:LINE: key: message``. A bare number is always refused: ``30`` could be
seconds or milliseconds, ``1000`` bits or bytes, and guessing wrong is worse
than asking.

Arithmetic goes through ``Decimal`` so that ``0.1s`` or ``2.5Gbit`` mean exactly
what they say and ``parse_duration(format_duration(x)) == x`` holds.
"""

from __future__ import annotations

import math
import re
from decimal import Decimal

__all__ = ["format_duration", "format_rate", "parse_duration", "parse_rate", "parse_size"]

_NUMBER = r"\d+(?:\.\d+)?"
_BARE_NUMBER = re.compile(rf"[+-]?{_NUMBER}")

# Largest unit first; "ms" before "m" so that the alternation does not stop at "m".
_DURATION_UNITS = {
    "h": Decimal(3600),
    "m": Decimal(60),
    "s": Decimal(1),
    "ms": Decimal("0.001"),
}
_DURATION = re.compile(rf"(?:{_NUMBER}(?:ms|h|m|s))+")
_DURATION_PART = re.compile(rf"({_NUMBER})(ms|h|m|s)")
# asyncio and the kernel's timers overflow long before this; nothing in the
# agent has a sane reason to wait longer than a year.
MAX_DURATION = 365 * 24 * 3600.0

_RATE = re.compile(rf"({_NUMBER})([kmgt]?)bit", re.IGNORECASE)
_RATE_PREFIX = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}

_SIZE = re.compile(rf"({_NUMBER})\s*(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?")
_SIZE_UNIT = {
    None: 1,
    "B": 1,
    "kB": 10**3,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KiB": 2**10,
    "MiB": 2**20,
    "GiB": 2**30,
    "TiB": 2**40,
}


def parse_duration(text: str) -> float:
    """Seconds in ``500ms``, ``30s``, ``5m``, ``1h`` or a sum such as ``1h30m``.

    Units must come largest first, each at most once. The result is positive
    and at most a year; anything else raises ``ValueError``.
    """
    if not isinstance(text, str):
        raise ValueError('a duration is text with a unit, such as "30s"')
    s = text.strip()
    if _BARE_NUMBER.fullmatch(s):
        if s.startswith("-"):
            raise ValueError(f"{s!r} is negative; a duration must be positive")
        raise ValueError(f'{s!r} has no unit; write "{s.lstrip("+")}s" (or ms, m, h)')
    if s.startswith("-"):
        raise ValueError(f"{s!r} is negative; a duration must be positive")
    if not _DURATION.fullmatch(s):
        raise ValueError(
            f'{s!r} is not a duration; write a number and a unit: "500ms", "30s", "5m", "1h"'
        )
    total = Decimal(0)
    previous = math.inf
    for number, unit in _DURATION_PART.findall(s):
        scale = _DURATION_UNITS[unit]
        if scale >= previous:
            raise ValueError(f'{s!r}: write units once each, largest first, as in "1h30m"')
        previous = float(scale)
        total += Decimal(number) * scale
    if total <= 0:
        raise ValueError(f"{s!r} is zero; a duration must be positive")
    seconds = float(total)
    if seconds > MAX_DURATION:
        raise ValueError(f"{s!r} is longer than a year")
    return seconds


def format_duration(seconds: float) -> str:
    """The shortest text ``parse_duration`` reads back as exactly ``seconds``."""
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_DURATION):
        raise ValueError("a duration must be positive and at most a year")
    # repr() is the shortest decimal that round-trips the float exactly.
    value = Decimal(repr(float(seconds)))
    for unit in ("h", "m", "s"):
        scale = _DURATION_UNITS[unit]
        if value % scale == 0:
            return f"{(value / scale).to_integral_value():f}{unit}"
    ms = (value * 1000).normalize()
    return f"{ms:f}ms"


def parse_rate(text: str) -> int:
    """Bits per second in ``100kbit``, ``50Mbit``, ``2.5Gbit`` (SI prefixes, as ``tc`` writes them).

    ``bps``, ``MB/s`` and binary prefixes are refused rather than guessed at:
    ``tc`` reads ``bps`` as *bytes* per second, while link speeds are quoted in
    bits, and a factor of eight in the capacity would make every published
    load figure wrong.
    """
    if not isinstance(text, str):
        raise ValueError('a rate is text with a unit, such as "1Gbit"')
    s = text.strip()
    if _BARE_NUMBER.fullmatch(s):
        raise ValueError(f'{s!r} has no unit; write bits per second such as "{s}bit" or "1Gbit"')
    match = _RATE.fullmatch(s)
    if match is None:
        raise ValueError(
            f'{s!r} is not a rate; write bits per second with an SI prefix: "100kbit", "50Mbit", '
            '"2.5Gbit"'
        )
    value = Decimal(match.group(1)) * _RATE_PREFIX[match.group(2).lower()]
    if value != value.to_integral_value():
        raise ValueError(f"{s!r} is not a whole number of bits per second")
    if value <= 0:
        raise ValueError(f"{s!r} is zero; a rate must be positive")
    return int(value)


def format_rate(bps: int) -> str:
    """The shortest ``parse_rate`` text for a whole number of bits per second."""
    if bps <= 0:
        raise ValueError("a rate must be positive")
    for prefix, scale in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if bps >= scale:
            text = f"{Decimal(bps) / scale:f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return f"{text}{prefix}bit"
    return f"{bps}bit"


def parse_size(text: str) -> int:
    """Bytes in ``1048576``, ``512KiB``, ``256MiB`` or ``1GB``.

    ``kB``, ``MB``, ``GB`` are SI (powers of 1000); ``KiB``, ``MiB``, ``GiB`` binary.
    """
    if not isinstance(text, str):
        raise ValueError('a size is a number of bytes or text such as "256MiB"')
    s = text.strip()
    match = _SIZE.fullmatch(s)
    if match is None:
        raise ValueError(f'{s!r} is not a size; write bytes or a unit: "512KiB", "256MiB", "1GiB"')
    value = Decimal(match.group(1)) * _SIZE_UNIT[match.group(2)]
    if value != value.to_integral_value():
        raise ValueError(f"{s!r} is not a whole number of bytes")
    if value <= 0:
        raise ValueError(f"{s!r} is zero; a size must be positive")
    return int(value)
