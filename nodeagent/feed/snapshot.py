"""The account feed: parsing and all-or-nothing validation of feed documents.

``parse_snapshot`` turns a full snapshot (docs/feed.md) into a
``DesiredState`` or raises ``FeedError``. Error messages name the position of
the problem (``wireguard.wg0.peers[12].allowed_ips[0]``), never the offending
value: a rejected document may hold real keys and addresses.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from nodeagent.core.model import AllowedIP, DesiredInterface, DesiredState, Peer, User, parse_key

_PEER_KEYS = frozenset({"public_key", "allowed_ips", "preshared_key", "expires_at"})
_USER_KEYS = frozenset({"username", "password_hash", "expires_at"})
# Interface names end up in error messages, so only name-shaped ones are accepted.
_IFNAME = re.compile(r"[A-Za-z0-9_.=+-]{1,15}\Z")
USERNAME = re.compile(r"[A-Za-z0-9._@+-]{1,128}\Z")
_SCRYPT = re.compile(
    r"scrypt\$(\d{1,10})\$(\d{1,4})\$(\d{1,4})\$([A-Za-z0-9+/=]{1,172})\$([A-Za-z0-9+/=]{1,172})\Z"
)
# One login must not cost the node seconds of CPU or gigabytes of memory:
# scrypt needs 128·N·r bytes, and p multiplies its time.
SCRYPT_MAX_MEMORY = 64 << 20
SCRYPT_MAX_P = 4


class FeedError(ValueError):
    """A feed document was rejected. The message never quotes the document's values.

    ``version`` is the rejected document's own version when it had a usable one:
    the HTTP client long-polls on it (``since=``) instead of decoding the body again.
    """

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


def decode_json(data: bytes | bytearray | str) -> Any:
    """The decoded document; FeedError for anything that is not JSON, however it fails.

    Nesting deeper than the interpreter's recursion limit (a body of 200,000
    ``[``) makes the decoder raise RecursionError: that is a bad document too.
    """
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        # json's message quotes no document text, only a position.
        raise FeedError(f"not valid JSON ({type(e).__name__} at {json_position(e)})") from None
    except RecursionError:
        raise FeedError("not valid JSON (nested too deeply)") from None


def document_version(doc: Any) -> str | None:
    """A decoded document's ``version``, if it is usable as ``since=``."""
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, str) and 0 < len(version) <= 256 else None


def parse_time(text: object) -> datetime:
    """An RFC 3339 timestamp with an explicit zone; ValueError otherwise."""
    if not isinstance(text, str) or "T" not in text:
        raise ValueError("not an RFC 3339 time")
    t = datetime.fromisoformat(text)
    if t.tzinfo is None:
        raise ValueError("time has no zone")
    return t


def parse_peer(where: str, raw: Any) -> tuple[Peer, datetime | None]:
    if not isinstance(raw, dict):
        raise FeedError(f"{where}: must be an object")
    unknown = raw.keys() - _PEER_KEYS
    if unknown:
        # The field's name is not quoted: a rejected document is untrusted text.
        raise FeedError(f"{where}: unknown field")
    try:
        public_key = parse_key(raw.get("public_key"))  # type: ignore[arg-type]
    except ValueError:
        raise FeedError(f"{where}.public_key: not 32 bytes of base64") from None
    psk: bytes | None = None
    if raw.get("preshared_key") is not None:
        try:
            psk = parse_key(raw["preshared_key"])
        except ValueError:
            raise FeedError(f"{where}.preshared_key: not 32 bytes of base64") from None
    ips_raw = raw.get("allowed_ips", [])
    if not isinstance(ips_raw, list):
        raise FeedError(f"{where}.allowed_ips: must be a list")
    ips: set[AllowedIP] = set()
    for j, text in enumerate(ips_raw):
        try:
            ips.add(AllowedIP.parse(text))
        except ValueError as e:
            raise FeedError(f"{where}.allowed_ips[{j}]: {e}") from None
    expires: datetime | None = None
    if raw.get("expires_at") is not None:
        try:
            expires = parse_time(raw["expires_at"])
        except ValueError:
            raise FeedError(f"{where}.expires_at: not an RFC 3339 time with a zone") from None
    return Peer(public_key, frozenset(ips), psk), expires


def interface_name(name: object) -> str:
    """A feed's interface key, if shaped like a Linux interface name; FeedError otherwise."""
    if not isinstance(name, str) or not _IFNAME.match(name):
        raise FeedError("wireguard: a key is not a valid interface name")
    return name


def _interface(name: str, raw: Any) -> DesiredInterface:
    where = f"wireguard.{name}"
    if not isinstance(raw, dict) or not isinstance(raw.get("peers"), list):
        raise FeedError(f"{where}: must be an object with a peers list")
    peers: dict[bytes, Peer] = {}
    expires: dict[bytes, datetime] = {}
    owner: dict[AllowedIP, int] = {}
    items = raw["peers"]
    for i in range(len(items)):
        # Released as it is consumed, so the decoded JSON shrinks while the state grows:
        # a million-peer snapshot would otherwise be held twice at its peak.
        item, items[i] = items[i], None
        peer, expiry = parse_peer(f"{where}.peers[{i}]", item)
        if peer.public_key in peers:
            raise FeedError(f"{where}.peers[{i}].public_key: duplicate public key")
        for ip in peer.allowed_ips:
            # The kernel would silently move the address to the later peer.
            first = owner.setdefault(ip, i)
            if first != i:
                raise FeedError(
                    f"{where}.peers[{i}].allowed_ips: an allowed IP of peers[{first}] again"
                )
        peers[peer.public_key] = peer
        if expiry is not None:
            expires[peer.public_key] = expiry
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
            raise FeedError(f"{where}: must be an object")
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


def parse_snapshot(data: bytes | str) -> DesiredState:
    """Validate a full snapshot; any problem rejects the whole document."""
    return snapshot_from_doc(decode_json(data))


def snapshot_from_doc(doc: Any) -> DesiredState:
    """Validate an already-decoded snapshot; FeedError carries its version if it had one."""
    try:
        return _snapshot(doc)
    except FeedError as e:
        raise FeedError(str(e), document_version(doc)) from None


def _snapshot(doc: Any) -> DesiredState:
    if not isinstance(doc, dict):
        raise FeedError("document must be a JSON object")
    version = doc.get("version")
    if not isinstance(version, str) or not version or len(version) > 256:
        raise FeedError("version: must be a non-empty string")
    if doc.get("full") is not True:
        raise FeedError("full: a snapshot must have full: true")
    wg_raw = doc.get("wireguard", {})
    if not isinstance(wg_raw, dict):
        raise FeedError("wireguard: must be an object")
    wireguard = {interface_name(n): _interface(n, raw) for n, raw in wg_raw.items()}
    users = parse_users(doc["openvpn"]) if doc.get("openvpn") is not None else {}
    return DesiredState(version=version, wireguard=wireguard, users=users)


def json_position(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno} column {e.colno}"
    return "unknown position"


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


def read_file_feed(path: str | Path) -> tuple[DesiredState, FileStamp | None]:
    """Read and validate a file feed; raises FeedError (or OSError if unreadable)."""
    before = stamp(path)
    data = Path(path).read_bytes()
    return parse_snapshot(data), before
