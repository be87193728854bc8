"""The one set of rules for interface names, and where a UAPI socket lives by default.

An interface name reaches the kernel (``dev_valid_name``: 1..15 bytes, not
``.`` or ``..``, no ``/``, ``:`` or whitespace), a socket path, log lines and
metric labels. The agent accepts the plain subset below everywhere a name comes
in (the configuration, the feed, the lab), so a name that passes here passes
everywhere after.
"""

from __future__ import annotations

import re

IFNAMSIZ = 16  # the kernel's buffer, with the terminating NUL
MAX_INTERFACE_NAME = IFNAMSIZ - 1
_NAME = re.compile(r"[A-Za-z0-9_.=+-]{1,15}\Z")

# wireguard-go and boringtun listen here whatever the network namespace.
UAPI_SOCKET_DIR = "/var/run/wireguard"


def interface_name_problem(name: str) -> str | None:
    """Why ``name`` is not an interface name the agent accepts; None if it is.

    The text never quotes the name (it may come from a hostile feed).
    """
    if not name:
        return "is empty"
    if len(name) > MAX_INTERFACE_NAME:
        return f"is longer than {MAX_INTERFACE_NAME} characters, the kernel's limit"
    if name in (".", "..") or not _NAME.match(name):
        return "is not an interface name: letters, digits and '_.=+-' only, not '.' or '..'"
    return None


def is_interface_name(name: object) -> bool:
    return isinstance(name, str) and interface_name_problem(name) is None


def uapi_socket_path(interface: str) -> str:
    """Where wireguard-go (or boringtun) listens for ``interface``."""
    return f"{UAPI_SOCKET_DIR}/{interface}.sock"
