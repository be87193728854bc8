"""Full snapshots: parsing and all-or-nothing validation, OpenVPN users, the file feed.

``parse_snapshot`` turns a full snapshot (docs/feed.md) into a
``DesiredState`` or raises ``FeedError``. Its peers are read by
``nodeagent.feed.peers``, as a delta's are; its users by ``parse_users`` here,
which deltas use too. Error messages name the position of the problem
(``wireguard.wg0.peers[12].allowed_ips[0]``), never the offending value: a
rejected document may hold real keys and addresses.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nodeagent.core.model import DesiredInterface, DesiredState, User
from nodeagent.feed.document import (
    FeedError,
    decode_json,
    document_text,
    document_version,
    parse_time,
)
from nodeagent.feed.peers import interface_name, parse_peers, peer_item

__all__ = [
    "SCRYPT_MAX_MEMORY",
    "SCRYPT_MAX_P",
    "USERNAME",
    "FeedError",
    "FileStamp",
    "parse_snapshot",
    "parse_users",
    "read_file_feed",
    "scrypt_problem",
    "snapshot_from_doc",
    "stamp",
]

_USER_KEYS = frozenset({"username", "password_hash", "expires_at"})
USERNAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}\Z")
_SCRYPT = re.compile(
    r"scrypt\$(\d{1,10})\$(\d{1,4})\$(\d{1,4})\$([A-Za-z0-9+/=]{1,172})\$([A-Za-z0-9+/=]{1,172})\Z"
)
# One login must not cost the node seconds of CPU or gigabytes of memory:
# scrypt needs 128·N·r bytes, and p multiplies its time.
SCRYPT_MAX_MEMORY = 64 << 20
SCRYPT_MAX_P = 4


def _interface(name: str, raw: Any, current: DesiredState | None) -> DesiredInterface:
    where = f"wireguard.{name}"
    if not isinstance(raw, dict) or not isinstance(raw.get("peers"), list):
        raise FeedError(f"{where}: must be an object with a peers list")
    held = current.wireguard.get(name) if current is not None else None
    # Consumed as it is read, and the unchanged peers are the current state's own:
    # a million-peer snapshot is not held twice at its peak.
    peers, expires = parse_peers(
        where, "peers", raw["peers"], consume=True, reuse=held.peers if held else None
    )
    return DesiredInterface(peers, expires)


def scrypt_problem(text: object) -> str | None:
    """What is wrong with a ``scrypt$N$r$p$<salt>$<hash>`` hash, or None if it is usable."""
    m = _SCRYPT.match(text) if isinstance(text, str) else None
    if m is None:
        return "unknown hash scheme or malformed hash"
    n, r, p = int(m[1]), int(m[2]), int(m[3])
    if n < 2 or n & (n - 1):
        return "scrypt N is not a power of two"
    if r < 1 or p < 1:
        return "scrypt r and p must be at least 1"
    if 128 * n * r > SCRYPT_MAX_MEMORY:
        return "scrypt parameters need more than 64 MiB"
    if p > SCRYPT_MAX_P:
        return f"scrypt p is above {SCRYPT_MAX_P}"
    for part in (m[4], m[5]):
        try:
            base64.b64decode(part, validate=True)
        except (binascii.Error, ValueError):
            return "salt or hash is not base64"
    return None


def parse_users(raw: Any) -> dict[str, User]:
    if not isinstance(raw, dict) or not isinstance(raw.get("users"), list):
        raise FeedError("openvpn: must be an object with a users list")
    users: dict[str, User] = {}
    for i, item in enumerate(raw["users"]):
        where = f"openvpn.users[{i}]"
        if not isinstance(item, dict):
            raise FeedError(f"{where}: must be a user object")
        if item.keys() - _USER_KEYS:
            raise FeedError(f"{where}: unknown field")
        name = item.get("username")
        if not isinstance(name, str) or not USERNAME.match(name):
            raise FeedError(f"{where}.username: missing or not a valid username")
        if name in users:
            raise FeedError(f"{where}.username: duplicate username")
        password_hash = item.get("password_hash")
        problem = scrypt_problem(password_hash)
        if problem is not None or not isinstance(password_hash, str):
            raise FeedError(f"{where}.password_hash: {problem}")
        expires: datetime | None = None
        if item.get("expires_at") is not None:
            try:
                expires = parse_time(item["expires_at"])
            except ValueError:
                raise FeedError(f"{where}.expires_at: not an RFC 3339 time with a zone") from None
        users[name] = User(name, password_hash, expires)
    return users


def parse_snapshot(data: bytes | str, current: DesiredState | None = None) -> DesiredState:
    """Validate a full snapshot; any problem rejects the whole document.

    ``current`` is the state it replaces, whose unchanged peers it shares.
    """
    doc = decode_json(data, peer_item)
    del data  # a file feed's text (13 MB at 100,000 peers): nothing else holds it
    return snapshot_from_doc(doc, current)


def snapshot_from_doc(doc: Any, current: DesiredState | None = None) -> DesiredState:
    """Validate an already-decoded snapshot; FeedError carries its version if it had one."""
    try:
        return _snapshot(doc, current)
    except FeedError as e:
        raise FeedError(str(e), document_version(doc)) from None


def _snapshot(doc: Any, current: DesiredState | None) -> DesiredState:
    if not isinstance(doc, dict):
        raise FeedError("document must be a feed document (a JSON object)")
    version = doc.get("version")
    if not isinstance(version, str) or not version or len(version) > 256:
        raise FeedError("version: must be a non-empty string")
    if doc.get("full") is not True:
        raise FeedError("full: a snapshot must have full: true")
    wg_raw = doc.get("wireguard", {})
    if not isinstance(wg_raw, dict):
        raise FeedError("wireguard: must be an object of interfaces")
    wireguard = {interface_name(n): _interface(n, raw, current) for n, raw in wg_raw.items()}
    users = parse_users(doc["openvpn"]) if doc.get("openvpn") is not None else {}
    return DesiredState(version=version, wireguard=wireguard, users=users)


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of a file: a change to any field means re-read it."""

    inode: int
    size: int
    mtime_ns: int


def stamp(path: str | Path) -> FileStamp | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return FileStamp(st.st_ino, st.st_size, st.st_mtime_ns)


def read_file_feed(
    path: str | Path, current: DesiredState | None = None
) -> tuple[DesiredState, FileStamp | None]:
    """Read and validate a file feed that replaces ``current``; FeedError or OSError."""
    before = stamp(path)
    return parse_snapshot(document_text(Path(path).read_bytes()), current), before
