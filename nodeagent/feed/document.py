"""What every feed document shares: the error that rejects one, JSON decoding, its version, times.

A ``FeedError`` names the position of a problem (``wireguard.wg0.peers[12]``),
never a value from the document: a rejected document may hold real keys and
addresses.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

__all__ = [
    "FeedError",
    "decode_json",
    "document_text",
    "document_version",
    "json_position",
    "parse_time",
]


class FeedError(ValueError):
    """A feed document was rejected. The message never quotes the document's values.

    ``version`` is the rejected document's own version when it had a usable one:
    the HTTP client long-polls on it (``since=``) instead of decoding the body again.
    """

    def __init__(self, message: str, version: str | None = None) -> None:
        super().__init__(message)
        self.version = version


def document_text(data: bytes) -> str | bytes:
    """The text ``json.loads`` would decode ``data`` into; ``data`` itself if it is not text.

    Called on a document just read, whose bytes are then dropped: the decoder
    would otherwise hold both (13 MB each at 100,000 peers) under its tree. A
    document that does not decode is returned as it is, for
    :func:`decode_json` to reject as it always has.
    """
    try:
        return data.decode(json.detect_encoding(data), "surrogatepass")
    except UnicodeDecodeError:
        return data


def decode_json(data: bytes | bytearray | str, each_object: Callable[[dict[str, Any]], Any]) -> Any:
    """The decoded document, each object as ``each_object`` returns it; FeedError for non-JSON.

    ``each_object`` is the decoder's object hook (``feed.peers.peer_item``).
    Nesting deeper than the interpreter's recursion limit (a body of 200,000
    ``[``) makes the decoder raise RecursionError: that is a bad document too.
    """
    try:
        return json.loads(data, object_hook=each_object)
    except (ValueError, UnicodeDecodeError) as e:
        # json's message quotes no document text, only a position.
        raise FeedError(f"not valid JSON ({type(e).__name__} at {json_position(e)})") from None
    except RecursionError:
        raise FeedError("not valid JSON (nested too deeply)") from None


def json_position(e: Exception) -> str:
    if isinstance(e, json.JSONDecodeError):
        return f"line {e.lineno} column {e.colno}"
    return "unknown position"


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
