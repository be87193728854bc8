"""A ``get=1`` reply taken as it arrives, in segments of whole peers, without I/O.

A reply of 60,000 peers is about 20 MB of text. The scrub read and the
configuration digest need neither all of it at once nor its lines as objects:
they look at one peer's lines at a time. :func:`peer_segments` re-cuts the
chunks a socket delivers (cut anywhere, even inside a line) where a peer's
``public_key=`` line begins, so a reader handles each segment as it would a
whole reply, and never holds more than the chunks since the last peer start.
Memory stays at a chunk or two instead of the reply twice over (bytes and text),
and no single call holds the interpreter for the whole reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

#: Where a peer's lines begin, with the newline that ends the line before.
PEER_MARK = "\npublic_key="
_KEEP = len(PEER_MARK) - 1  # a mark that straddles two chunks starts within this many


def peer_segments(chunks: Iterable[str]) -> Iterator[str]:
    """The text of ``chunks``, re-cut so that no peer's lines span two segments.

    Every segment but the first begins with :data:`PEER_MARK` (the newline
    before a ``public_key=`` line) and ends where the next such mark, or the
    text, does; the first holds the reply's start (the device's lines). The
    segments joined are the chunks joined, and none is empty. Linear in the
    text, whatever the chunks' sizes: the text since the last mark is kept as
    a list of chunks and joined once, when a segment is cut from it.
    """
    held: list[str] = []  # the text since the last cut, as it came
    tail = ""  # the last _KEEP characters of that text
    for chunk in chunks:
        probe = tail + chunk
        at = probe.rfind(PEER_MARK) - len(tail)  # relative to chunk; < 0: it began in tail
        if at < -len(tail):  # no mark
            held.append(chunk)
            tail = probe[-_KEEP:]
            continue
        if at >= 0:
            segment, rest = "".join(held) + chunk[:at], chunk[at:]
        else:
            text = "".join(held)
            segment, rest = text[:at], text[at:] + chunk
        if segment:
            yield segment
        held, tail = [rest], rest[-_KEEP:]
    text = "".join(held)
    if text:
        yield text


def with_last(segments: Iterable[str]) -> Iterator[tuple[str, bool]]:
    """Each segment, and whether it is the last (which holds the reply's ending)."""
    it = iter(segments)
    previous = next(it, None)
    if previous is None:
        return
    for segment in it:
        yield previous, False
        previous = segment
    yield previous, True
