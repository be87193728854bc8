"""Converters for plain YAML values and files: ``(At) -> value``, raising ``Invalid``.

Text, booleans, numbers, ports, percentages, choices, durations, rates and
sizes (``nodeagent.config.units``), file paths taken relative to the
configuration file's directory and returned absolute, existing files and secret
files read early. They know nothing of what the file configures; those for
names, addresses and URLs live beside the agent's schema.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Callable
from typing import TypeVar

from nodeagent.config.units import parse_duration, parse_rate, parse_size
from nodeagent.config.walker import At, Invalid, wrong_type

__all__ = [
    "boolean",
    "checked_by",
    "choice",
    "duration",
    "existing_file",
    "number",
    "percent",
    "port",
    "rate",
    "relative_path",
    "size",
    "string",
]

T = TypeVar("T")


def string(at: At) -> str:
    """Non-blank text; a YAML 1.1 boolean or number gets a hint to quote it."""
    value = at.scalar()
    if not isinstance(value, str):
        raise wrong_type(at, "a string", quote_hint=True)
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def boolean(at: At) -> bool:
    """``true`` or ``false``."""
    value = at.scalar()
    if not isinstance(value, bool):
        raise wrong_type(at, "true or false")
    return value


def _int(at: At) -> int:
    value = at.scalar()
    # bool is an int subclass: "yes" must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise wrong_type(at, "a whole number")
    return value


def number(at: At) -> float:
    """A finite integer or decimal number, as a float; booleans are refused."""
    value = at.scalar()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise wrong_type(at, "a number")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond any float
        raise Invalid("must be a finite number") from None
    if not math.isfinite(result):
        raise Invalid("must be a finite number")
    return result


def port(at: At) -> int:
    """A TCP or UDP port number, 1..65535."""
    value = _int(at)
    if not 1 <= value <= 65535:
        raise Invalid(f"{value} is not a port; must be 1..65535")
    return value


def percent(at: At) -> float:
    """A number more than 0 and at most 100."""
    value = number(at)
    if not 0 < value <= 100:
        raise Invalid(f"{value:g} must be more than 0 and at most 100")
    return value


def choice(*options: str) -> Callable[[At], str]:
    """A converter for one of ``options``."""

    def convert(at: At) -> str:
        value = at.scalar()
        if value not in options:
            raise Invalid(f"must be one of {', '.join(options)}")
        return value

    return convert


def _parsed(parse: Callable[[str], T], example: str) -> Callable[[At], T]:
    """A converter for text read by ``parse``; a bare YAML number gets a hint to add a unit."""

    def convert(at: At) -> T:
        value = at.scalar()
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise Invalid(
                f"{at.node.value} has no unit; write it as text with a unit, e.g. {example}"
            )
        if not isinstance(value, str):
            raise wrong_type(at, f"text such as {example}")
        try:
            return parse(value)
        except ValueError as e:
            raise Invalid(str(e)) from None

    return convert


# Seconds and bits per second, as nodeagent.units parses them.
duration = _parsed(parse_duration, '"30s" (units: ms, s, m, h)')
rate = _parsed(parse_rate, '"1Gbit" (bits per second: kbit, Mbit, Gbit)')


def size(at: At) -> int:
    """A positive number of bytes, as a bare number or with a unit (``256MiB``)."""
    value = at.scalar()
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise Invalid("must be positive")
        return value
    if not isinstance(value, str):
        raise wrong_type(at, 'a number of bytes or text such as "256MiB"')
    try:
        return parse_size(value)
    except ValueError as e:
        raise Invalid(str(e)) from None


def relative_path(at: At) -> str:
    """A path, taken relative to the file's directory; returned absolute and normalized."""
    return os.path.normpath(at.walk.base / string(at))


def existing_file(at: At) -> str:
    """A readable regular file's path, as ``relative_path`` returns it."""
    path = relative_path(at)
    try:
        st = os.stat(path)
    except OSError as e:
        raise Invalid(f"{path}: {e.strerror}") from None
    except ValueError:  # a NUL, or a character the file system encoding cannot write
        raise Invalid("is not a usable file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise Invalid(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise Invalid(f"{path}: Permission denied")
    return path


def checked_by(read: Callable[[str], bytes]) -> Callable[[At], str]:
    """A converter for a secret file's path; the file is read now, to find problems early."""

    def convert(at: At) -> str:
        path = relative_path(at)
        try:
            read(path)
        except OSError as e:
            raise Invalid(f"{path}: {e.strerror}") from None
        except ValueError as e:
            raise Invalid(str(e)) from None
        return path

    return convert
