"""The text of WireGuard's cross-platform configuration protocol (UAPI), without I/O.

See https://www.wireguard.com/xplatform/. A ``get=1`` reply is ``key=value``
lines, device keys first, then each peer starting at its ``public_key`` line,
ending with ``errno=N`` and a blank line. A ``set=1`` request is one transaction
of such lines ended by a blank line, answered by ``errno=N``. Keys are hex.

Only what the agent reconciles is parsed: the device's private key and port, and
each peer's public key, preshared key and allowed IPs. Endpoints, handshake
times and byte counts are skipped without being kept, so they cannot leak from
here into a log line or a metric. :func:`reply_digest` sums hashes of the
configuration lines of a reply and leaves those lines out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from nodeagent.core.backend import DIGEST_MASK
from nodeagent.core.model import (
    KEY_LEN,
    ZERO_KEY,
    Device,
    PeerTable,
    Plan,
    added_parts,
    peer_record,
)
from nodeagent.core.routes import AllowedIP, AllowedIPs, packed_routes, parse_packed_ip
from nodeagent.wireguard.uapi.segments import PEER_MARK, with_last

GET_REQUEST = b"get=1\n\n"
_ZERO_HEX = ZERO_KEY.hex()


class UapiProtocolError(ValueError):
    """The daemon's reply is not well-formed UAPI text. Never quotes the offending text."""


def _reply_end(text: str) -> tuple[int, int]:
    """Where a whole reply's body ends (the newline before its errno line; -1: none), and errno."""
    if not text.endswith("\n\n"):
        raise UapiProtocolError("reply does not end with a blank line")
    cut = text.rfind("\n", 0, len(text) - 2)
    name, sep, value = text[cut + 1 : -2].partition("=")
    if name != "errno" or not sep:
        raise UapiProtocolError("reply does not end with an errno line")
    try:
        errno = int(value)
    except ValueError:
        raise UapiProtocolError("reply has a malformed errno line") from None
    if not -(2**31) <= errno < 2**31:
        # An errno is a C int; a longer number is no errno, and could be anything.
        raise UapiProtocolError("reply has a malformed errno line")
    return cut, errno


def split_reply(text: str) -> tuple[list[str], int]:
    """Split a whole reply into its body lines and the final ``errno`` value."""
    cut, errno = _reply_end(text)
    return (text[:cut].split("\n") if cut >= 0 else []), errno


# The lines of a get=1 reply that change with a peer's activity, each with the
# newline before it. Never part of a digest: neither kept nor compared.
_VOLATILE = re.compile(
    # endpoint, last_handshake_time_sec/_nsec, tx_bytes, rx_bytes; the shorter
    # alternation and the possessive tail make the scan of 20 MB about a fifth faster.
    r"\n(?:endpoint|last_handshake_time_n?sec|[rt]x_bytes)=[^\n]*+"
)
# wireguard-go writes a peer's activity as one run of lines after its protocol
# version, the same for every peer; for a peer that has had none, always this text.
_QUIET = (
    "version=1\nlast_handshake_time_sec=0\nlast_handshake_time_nsec=0\ntx_bytes=0\nrx_bytes=0\n"
)
# Such a run that is not the quiet one: rewritten as the quiet one. The literal start
# lets the scan skip from one "version=1" to the next, and a reply whose peers are all
# quiet is not copied at all: 26 ms at 100,000 peers, where cutting the lines out
# of every peer took 100.
_ACTIVE = re.compile(
    r"version=1\n(?!" + re.escape(_QUIET[len("version=1\n") :]) + r")"
    r"(?:endpoint=[^\n]*+\n)?last_handshake_time_sec=[^\n]*+\nlast_handshake_time_nsec=[^\n]*+\n"
    r"tx_bytes=[^\n]*+\nrx_bytes=[^\n]*+\n"
)
_PEER_START = "public_key="


def reply_digest(text: str) -> tuple[int, int]:
    """The configuration digest of a whole ``get=1`` reply (0 if errno is set), and errno."""
    return digest_segments((text,))


def digest_segments(segments: Iterable[str]) -> tuple[int, int]:
    """:func:`reply_digest` of a reply given as :func:`segments.peer_segments` cut it.

    Nothing is decoded, and everything runs at C speed, a segment at a time:
    each peer's activity lines are made alike, the text is split where a peer
    starts, and the ``hash()`` of each piece is summed (modulo 2**64), so the
    order of the peers (wireguard-go lists them in Go's random map order) and
    where the segments were cut do not matter (a segment's empty piece before
    its first peer counts ``hash("") == 0``). The first piece is the device's
    own lines (private key, port). Any difference in a peer's lines changes
    the digest, also one the parser would not mind, which only ever leads to
    a full read. The ending and the errno line are checked as
    :func:`split_reply` checks them.

    Activity lines are made alike in one of two ways, chosen by the first
    peer: in wireguard-go's layout (the first peer's activity run is where
    wireguard-go writes it) each peer's run is rewritten as the quiet one,
    and a reply of quiet peers is not even copied; in another daemon's, the
    activity lines are cut out. Either way only activity lines are touched,
    never configuration: a peer not in the chosen layout keeps its activity
    in its piece, which only makes the digest change with it, and so leads
    to a full read.
    """
    total = 0
    first = True
    wireguard_go: bool | None = None  # the layout, once a peer is seen
    for segment, last in with_last(segments):
        if last:
            cut, errno = _reply_end(segment)
            if errno:
                return 0, errno
        quiet = _ACTIVE.sub(_QUIET, segment)
        parts = quiet.split(PEER_MARK)
        peers_only = first and parts[0].startswith(_PEER_START)  # no device lines
        if wireguard_go is None and len(parts) > 1 - peers_only:
            wireguard_go = _QUIET in parts[1 - peers_only]  # the reply's first peer
        if not wireguard_go:
            parts = _VOLATILE.sub("", quiet).split(PEER_MARK)
        elif first and not peers_only:
            parts[0] = _VOLATILE.sub("", parts[0])  # the device's lines: cut out as ever
        if last:
            # The errno line and the blank line end the last piece (the subs leave them be).
            parts[-1] = parts[-1][: cut - len(segment)] if cut >= 0 else ""
        if peers_only:
            # No device lines: the first piece is a peer's, cut like the others (an
            # absent device piece counts as hash("") == 0 would).
            parts[0] = parts[0][len(_PEER_START) :]
        total += sum(map(hash, parts))
        first = False
    if first:
        _reply_end("")  # no text at all: refused as an empty reply is
    return total & DIGEST_MASK, 0


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
    reader = _DeviceReader()
    reader.read(lines)
    return reader.device()


class _DeviceReader:
    """:func:`parse_device` a batch of lines at a time: a reply read as it arrives.

    The peers are kept as a :class:`PeerTable`'s records, a peer's flushed at
    the next ``public_key`` line (and by :meth:`device`).
    """

    def __init__(self) -> None:
        self.private_key: bytes | None = None
        self.listen_port = 0
        self.records: dict[bytes, bytes] = {}
        # The peer being read: its key, psk and routes (packed, as AllowedIPs.from_packed takes).
        self.current: bytes | None = None
        self.psk: bytes | None = None
        self.ips: list[bytes] = []

    def read(self, lines: Iterable[str]) -> None:
        records, current, psk, ips = self.records, self.current, self.psk, self.ips
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
                    records[current] = peer_record(packed_routes(ips), psk)
                current, psk, ips = _key(value), None, []
            elif name == "preshared_key":
                if current is None:
                    raise UapiProtocolError("reply has preshared_key before any peer")
                psk = None if value == _ZERO_HEX else _key(value)
            elif name == "private_key" and current is None:
                private_key = _key(value)
                self.private_key = None if private_key == ZERO_KEY else private_key
            elif name == "listen_port" and current is None:
                # isascii: isdigit() also takes "²", which int() refuses.
                if (
                    not (value.isascii() and value.isdigit())
                    or len(value) > 5
                    or int(value) > 65535
                ):
                    raise UapiProtocolError("reply has a malformed listen_port")
                self.listen_port = int(value)
            # Anything else (endpoint, handshake times, byte counts, keepalive,
            # protocol_version, fwmark) is deliberately dropped unread.
        self.current, self.psk, self.ips = current, psk, ips

    def device(self) -> Device:
        if self.current is not None:
            self.records[self.current] = peer_record(packed_routes(self.ips), self.psk)
            self.current = None
        return Device(self.private_key, self.listen_port, PeerTable.of_records(self.records))


def parse_get_reply(text: str) -> tuple[Device, int]:
    """Parse a whole ``get=1`` reply: the device (empty if errno is set) and errno."""
    return parse_get_segments((text,))


def parse_get_segments(segments: Iterable[str]) -> tuple[Device, int]:
    """:func:`parse_get_reply` of a reply given as :func:`segments.peer_segments` cut it.

    Read a segment at a time, so only one segment's lines are ever held (a
    reply of 50,000 peers split into its 450,000 lines took 38 MB of small
    strings at once, which the allocator could not all return). The
    device carries the reply's :func:`reply_digest`, taken in the same pass,
    unless a key is listed twice (which wireguard-go never does): the parser
    keeps its last listing, the digest sums both, and another reply with the
    same pieces in another order would parse differently, so such a digest
    vouches for nothing.
    """
    reader = _DeviceReader()
    listed = 0

    def read_each(segments: Iterable[str]) -> Iterator[str]:
        nonlocal listed
        first = True
        for segment, last in with_last(segments):
            body = segment
            if last:  # its lines are read before its errno counts, as every other line is
                cut = _reply_end(segment)[0]
                body = segment[:cut] if cut >= 0 else ""
            lines = body.split("\n") if body else []
            if not first and lines and not lines[0]:
                del lines[0]  # the newline before the segment's first public_key line
            reader.read(lines)
            listed += segment.count(PEER_MARK) + (first and segment.startswith(_PEER_START))
            first = False
            yield segment

    digest, errno = digest_segments(read_each(segments))
    if errno:
        return Device(), errno
    device = reader.device()
    vouched = digest if listed == len(device.peers) else None
    return Device(device.private_key, device.listen_port, device.peers, vouched), 0


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
    return list(_plan_lines(plan))


def plan_request(plan: Plan) -> bytes:
    """``set_request(plan_lines(plan))``, without ever holding the list of lines."""
    return set_request(_plan_lines(plan))


_LINES_A_BATCH = 4096


def _plan_lines(plan: Plan) -> Iterator[str]:
    for key, psk, routes in added_parts(plan.add):  # a table's: no Peer made on the way
        yield f"public_key={key.hex()}"
        if psk is not None:
            yield f"preshared_key={psk.hex()}"
        yield "replace_allowed_ips=true"
        yield from _ips(AllowedIPs.canonical(routes))
    for u in plan.update:
        yield f"public_key={u.public_key.hex()}"
        yield "update_only=true"
        if u.change_preshared_key:
            psk = u.preshared_key if u.preshared_key is not None else ZERO_KEY
            yield f"preshared_key={psk.hex()}"
        if u.allowed_ips is not None:
            yield "replace_allowed_ips=true"
            yield from _ips(u.allowed_ips)
    for key in plan.remove:
        yield f"public_key={key.hex()}"
        yield "remove=true"


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


def set_request(lines: Iterable[str]) -> bytes:
    """A complete ``set=1`` request for ``lines``; empty bytes when there is nothing to set.

    Made a few thousand lines at a time: a first pass over 100,000 peers is
    half a million lines, which held as small strings all at once took about
    40 MB that the allocator kept scattered among what stayed. Each batch is
    joined and encoded (one large block, returned to the system when freed)
    before the next is made.
    """
    chunks = [b"set=1\n"]
    batch: list[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == _LINES_A_BATCH:
            batch.append("")
            chunks.append("\n".join(batch).encode("ascii"))
            batch.clear()
    if len(chunks) == 1 and not batch:
        return b""
    batch += ["", ""]
    chunks.append("\n".join(batch).encode("ascii"))
    return b"".join(chunks)
