"""The text of WireGuard's cross-platform configuration protocol (UAPI), without I/O.

See https://www.wireguard.com/xplatform/. A ``get=1`` reply is ``key=value``
lines, device keys first, then each peer starting at its ``public_key`` line,
ending with ``errno=N`` and a blank line. A ``set=1`` request is one transaction
of such lines ended by a blank line, answered by ``errno=N``. Keys are hex.

Only what the agent reconciles is parsed: the device's private key and port, and
each peer's public key, preshared key and allowed IPs. Endpoints, handshake
times and byte counts are skipped without being kept, so they cannot leak from
here into a log line or a metric.
"""

from __future__ import annotations

from collections.abc import Iterable

from nodeagent.core.model import (
    KEY_LEN,
    ZERO_KEY,
    AllowedIP,
    AllowedIPs,
    Device,
    Peer,
    Plan,
    parse_packed_ip,
)

GET_REQUEST = b"get=1\n\n"
_ZERO_HEX = ZERO_KEY.hex()


class UapiProtocolError(ValueError):
    """The daemon's reply is not well-formed UAPI text. Never quotes the offending text."""


def split_reply(text: str) -> tuple[list[str], int]:
    """Split a whole reply into its body lines and the final ``errno`` value."""
    if not text.endswith("\n\n"):
        raise UapiProtocolError("reply does not end with a blank line")
    lines = text[:-2].split("\n")
    last = lines.pop()
    name, sep, value = last.partition("=")
    if name != "errno" or not sep:
        raise UapiProtocolError("reply does not end with an errno line")
    try:
        errno = int(value)
    except ValueError:
        raise UapiProtocolError("reply has a malformed errno line") from None
    if not -(2**31) <= errno < 2**31:
        # An errno is a C int; a longer number is no errno, and could be anything.
        raise UapiProtocolError("reply has a malformed errno line")
    return lines, errno


def _key(value: str) -> bytes:
    if len(value) != 64:
        raise UapiProtocolError("reply has a key of the wrong length")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise UapiProtocolError("reply has a key that is not hex") from None
    if len(raw) != KEY_LEN:  # fromhex() skips spaces: 64 characters may be fewer bytes
        raise UapiProtocolError("reply has a key of the wrong length")
    return raw


def parse_device(lines: Iterable[str]) -> Device:
    """The device described by the body lines of a ``get=1`` reply."""
    private_key: bytes | None = None
    listen_port = 0
    peers: dict[bytes, Peer] = {}
    # The peer being read: its key, psk and routes, flushed at the next public_key.
    current: bytes | None = None
    psk: bytes | None = None
    ips: list[bytes] = []  # packed (AllowedIPs.from_packed)
    empty = AllowedIPs()

    for line in lines:
        name, sep, value = line.partition("=")
        if not sep:
            raise UapiProtocolError("reply has a line without '='")
        if name == "allowed_ip":
            if current is None:
                raise UapiProtocolError("reply has allowed_ip before any peer")
            try:
                ips.append(parse_packed_ip(value))
            except ValueError:
                raise UapiProtocolError("reply has a malformed allowed_ip") from None
        elif name == "public_key":
            if current is not None:
                peers[current] = Peer(current, AllowedIPs.from_packed(ips) if ips else empty, psk)
            current, psk, ips = _key(value), None, []
        elif name == "preshared_key":
            if current is None:
                raise UapiProtocolError("reply has preshared_key before any peer")
            psk = None if value == _ZERO_HEX else _key(value)
        elif name == "private_key" and current is None:
            private_key = _key(value)
            if private_key == ZERO_KEY:
                private_key = None
        elif name == "listen_port" and current is None:
            # isascii: isdigit() also takes "²", which int() refuses.
            if not (value.isascii() and value.isdigit()) or len(value) > 5 or int(value) > 65535:
                raise UapiProtocolError("reply has a malformed listen_port")
            listen_port = int(value)
        # Anything else (endpoint, handshake times, byte counts, keepalive,
        # protocol_version, fwmark) is deliberately dropped unread.
    if current is not None:
        peers[current] = Peer(current, AllowedIPs.from_packed(ips) if ips else empty, psk)
    return Device(private_key, listen_port, peers)


def parse_get_reply(text: str) -> tuple[Device, int]:
    """Parse a whole ``get=1`` reply: the device (empty if errno is set) and errno."""
    lines, errno = split_reply(text)
    if errno:
        return Device(), errno
    return parse_device(lines), errno


def parse_set_reply(text: str) -> int:
    """The errno of a ``set=1`` reply (which has no body)."""
    lines, errno = split_reply(text)
    if lines:
        raise UapiProtocolError("set reply has unexpected lines")
    return errno


def _ips(ips: Iterable[AllowedIP]) -> list[str]:
    # Sorted so that the same plan always produces the same bytes.
    return [f"allowed_ip={ip}" for ip in sorted(ips)]


def plan_lines(plan: Plan) -> list[str]:
    """The lines of one ``set=1`` transaction for ``plan``: adds, updates, removals last.

    ``replace_peers`` is never used: the agent never flushes an interface.
    Updates carry ``update_only`` so that a peer that vanished meanwhile is not
    re-created half-configured.
    """
    out: list[str] = []
    for peer in plan.add:
        out.append(f"public_key={peer.public_key.hex()}")
        if peer.preshared_key is not None:
            out.append(f"preshared_key={peer.preshared_key.hex()}")
        out.append("replace_allowed_ips=true")
        out.extend(_ips(peer.allowed_ips))
    for u in plan.update:
        out.append(f"public_key={u.public_key.hex()}")
        out.append("update_only=true")
        if u.change_preshared_key:
            psk = u.preshared_key if u.preshared_key is not None else ZERO_KEY
            out.append(f"preshared_key={psk.hex()}")
        if u.allowed_ips is not None:
            out.append("replace_allowed_ips=true")
            out.extend(_ips(u.allowed_ips))
    for key in plan.remove:
        out.append(f"public_key={key.hex()}")
        out.append("remove=true")
    return out


def clamp_private_key(key: bytes) -> bytes:
    """The Curve25519-clamped form of a private key, which is what a daemon stores and reports.

    Comparing a configured key with the read-back one must use this form, or an
    unclamped key from a config file would look changed on every setup.
    """
    b = bytearray(key)
    b[0] &= 248
    b[31] = (b[31] & 127) | 64
    return bytes(b)


def device_lines(private_key: bytes | None = None, listen_port: int | None = None) -> list[str]:
    """Device-level lines setting the private key and/or the listen port."""
    out: list[str] = []
    if private_key is not None:
        out.append(f"private_key={private_key.hex()}")
    if listen_port is not None:
        out.append(f"listen_port={listen_port}")
    return out


def set_request(lines: list[str]) -> bytes:
    """A complete ``set=1`` request for ``lines``; empty bytes when there is nothing to set."""
    if not lines:
        return b""
    return ("set=1\n" + "\n".join(lines) + "\n\n").encode("ascii")
