"""Fuzz target: a ``get=1`` reply read as it arrives, cut anywhere, reads as the whole reply.

Inputs: the replies of ``test_fuzz_uapi`` (as wireguard-go writes them,
mutated, and random), cut into chunks at random places, down to one character
a chunk. ``peer_segments`` gives the same text back in segments of whole
peers; the digest and the scrub read over those segments end exactly as the
whole-reply functions do on the joined text: the same value, or both the
parser's own error. The read-back, a segment at a time, ends as the reply's
lines split at once and read whole do.
"""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.core.model import Device
from nodeagent.wireguard.uapi import idle as uapi_idle
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.segments import PEER_MARK, peer_segments
from tests.fuzz.harness import ended_well, target
from tests.fuzz.test_fuzz_uapi import NOW, any_reply

# Where to cut, as fractions of the text's length (sorted and deduplicated below).
cuts = st.one_of(
    st.lists(st.integers(0, 10_000), max_size=12),
    st.just([-1]),  # one character a chunk
)


def chunked(text: str, at: list[int]) -> list[str]:
    if at == [-1]:
        return list(text)
    points = sorted({len(text) * a // 10_000 for a in at} | {0, len(text)})
    return [text[a:b] for a, b in itertools.pairwise(points)]


@target(400)
@given(any_reply, cuts)
def test_segments_are_the_text_cut_between_peers(text: str, at: list[int]) -> None:
    segments = list(peer_segments(chunked(text, at)))
    assert "".join(segments) == text
    assert all(segments), "an empty segment"
    # Cut only where a peer's lines begin: a peer's lines never span two segments.
    assert all(s.startswith(PEER_MARK) for s in segments[1:])
    # At most one segment a chunk, and the rest once they end.
    assert len(segments) <= len(chunked(text, at)) + 1


@target(400)
@given(any_reply, cuts, st.floats(0, 1e6))
def test_read_as_it_arrives_ends_as_the_whole_reply(
    text: str, at: list[int], idle_after: float
) -> None:
    err = uapi_text.UapiProtocolError

    def outcome(fn: object) -> object:
        result = ended_well(fn, err, source=text)  # type: ignore[arg-type]
        return type(result) if isinstance(result, err) else result

    whole = outcome(lambda: uapi_text.reply_digest(text))
    assert outcome(lambda: uapi_text.digest_segments(peer_segments(chunked(text, at)))) == whole
    whole = outcome(lambda: uapi_idle.idle_from_reply(text, idle_after, NOW))
    streamed = outcome(
        lambda: uapi_idle.idle_from_segments(peer_segments(chunked(text, at)), idle_after, NOW)
    )
    assert streamed == whole


def read_whole(text: str) -> tuple[Device, int | None, int]:
    """The read-back of ``text`` with every line split at once: the device, its digest, errno."""
    lines, errno = uapi_text.split_reply(text)
    device = uapi_text.parse_device(lines)  # every line is read, whatever the errno
    if errno:
        return Device(), None, errno
    listed = text.count(PEER_MARK) + text.startswith("public_key=")
    digest = uapi_text.reply_digest(text)[0] if listed == len(device.peers) else None
    return device, digest, errno


@target(400)
@given(any_reply, cuts)
def test_a_read_back_as_it_arrives_ends_as_the_lines_read_whole(text: str, at: list[int]) -> None:
    err = uapi_text.UapiProtocolError

    def outcome(fn: object) -> object:
        result = ended_well(fn, err, source=text)  # type: ignore[arg-type]
        if isinstance(result, err):
            return type(result)
        assert isinstance(result, tuple)
        return result

    streamed = outcome(lambda: uapi_text.parse_get_segments(peer_segments(chunked(text, at))))
    whole = outcome(lambda: read_whole(text))
    if isinstance(whole, tuple):
        assert isinstance(streamed, tuple)
        (device, errno), (want, digest, want_errno) = streamed, whole
        assert (device, device.digest, errno) == (want, digest, want_errno)
    else:
        assert streamed == whole
