"""Converters for the values only the agent's configuration has: names, addresses, URLs, secrets.

Each is ``(At) -> value`` and raises ``Invalid``, like the plain ones in
``nodeagent.config.values``. The operator wrote these values, so a problem may
quote them. Interface names follow ``nodeagent.core.names``, the rules the feed
and the lab use too.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Literal, cast
from urllib.parse import urlsplit

from nodeagent.config.secretfile import read_private_key, read_secret
from nodeagent.config.values import (
    checked_by,
    choice,
    existing_file,
    number,
    rate,
    relative_path,
    string,
)
from nodeagent.config.walker import At, Invalid
from nodeagent.core.names import interface_name_problem

__all__ = [
    "backend",
    "capacity",
    "feed_path",
    "host_port",
    "http_url",
    "interface_name",
    "ip_interface",
    "management",
    "node_name",
    "private_key_file",
    "ratio",
    "secret_file",
    "socket_path",
]


def capacity(at: At) -> int | None:
    return None if at.scalar() == "auto" else rate(at)


def ratio(at: At) -> float:
    value = number(at)
    if not 0 < value <= 1:
        raise Invalid(f"{value:g} is not in (0, 1]; e.g. 0.5 refuses a feed that removes over half")
    return value


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def node_name(at: At) -> str:
    # It travels in an HTTP header and in URLs: keep it to hostname-like characters.
    name = string(at)
    if not _NODE_NAME.fullmatch(name):
        raise Invalid(
            "must be 1..63 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def interface_name(at: At) -> str:
    """An interface name by the rules of ``core.names``: within the kernel's limits, plain."""
    name = string(at)
    problem = interface_name_problem(name)
    if problem is not None:
        # The operator wrote the name: quoting it helps, and leaks nothing.
        raise Invalid(f"{name!r} {problem}")
    return name


def feed_path(at: At) -> str:
    # A missing feed file is a state, not a mistake: the agent starts fail-static
    # (leaves the kernel as it is) and applies the file once it appears. Its
    # directory must exist, though, or the file could never be watched for.
    path = relative_path(at)
    if not os.path.isdir(os.path.dirname(path)):
        raise Invalid(f"{os.path.dirname(path)}: No such directory")
    if os.path.lexists(path):
        return existing_file(at)
    return path


secret_file = checked_by(read_secret)
private_key_file = checked_by(read_private_key)


def socket_path(at: At) -> str:
    path = string(at)
    if not path.startswith("/"):
        raise Invalid("must be an absolute path")
    return path


def http_url(at: At) -> str:
    url = string(at)
    try:
        parts = urlsplit(url)
    except ValueError:  # a bracketed host that is not an IPv6 address, and the like
        raise Invalid("must be an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise Invalid("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise Invalid("must not contain credentials; put them in a token or secret file")
    return url


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def host_port(at: At) -> str:
    """``host:port``, ``1.2.3.4:port`` or ``[IPv6]:port``, returned as written."""
    text = string(at)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if sep != ":":
            raise Invalid(f"{text} needs a port, as in [::1]:9586")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise Invalid(f"{text} is not [IPv6 address]:port") from None
    elif ":" not in text:
        raise Invalid(f"{text} needs a port, as in 127.0.0.1:9586")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise Invalid(f"write IPv6 addresses in brackets, as in [{host}]:{port}")
        looks_numeric = bool(re.fullmatch(r"[\d.]+", host))
        if looks_numeric:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise Invalid(f"{host} is not an IPv4 address") from None
        elif not _HOSTNAME.fullmatch(host):
            raise Invalid(f"{text} is not host:port")
    # isascii: str.isdigit() also accepts digits such as "²", which int() refuses.
    if not sep or not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise Invalid(f"{text} needs a port 1..65535, as in 127.0.0.1:9586 or [::1]:9586")
    return text


def ip_interface(at: At) -> str:
    """An address with a prefix length (``10.8.0.1/16``), in its canonical form."""
    text = string(at)
    try:
        if "/" not in text:
            raise ValueError
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise Invalid(f"{text} is not an address with a prefix length, as in 10.8.0.1/16") from None


def management(at: At) -> str:
    """OpenVPN's management interface: a unix socket, or TCP on a loopback address.

    Whoever reaches the interface can read every client's real address
    (``status``), so TCP is accepted on loopback only.
    """
    text = string(at)
    if "/" in text:
        return socket_path(at)
    address = host_port(at)
    host = address.rpartition(":")[0].strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise Invalid(
            f"{address} is not on a loopback address; use a unix socket "
            "or 127.0.0.1:PORT (anyone who reaches it can list every client's address)"
        )
    return address


def backend(at: At) -> Literal["kernel", "userspace"]:
    return cast(Literal["kernel", "userspace"], choice("kernel", "userspace")(at))
