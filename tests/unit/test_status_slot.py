"""The shared status slot: a reader gets a whole body the writer wrote, never a torn one."""

from __future__ import annotations

import os
import struct
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.daemon import statusslot
from nodeagent.daemon.statusslot import StatusSlot

_SEQ = struct.Struct("=Q")
_HEAD = struct.Struct("=II")


def test_a_body_written_is_read_whole_and_an_empty_slot_reads_empty() -> None:
    slot = StatusSlot()
    assert slot.read() == b""
    slot.write(b'{"node":"nl-ams-01"}')
    assert slot.read() == b'{"node":"nl-ams-01"}'
    slot.write(b"{}")  # shorter than the one before: its tail is not read
    assert slot.read() == b"{}"


@given(st.lists(st.binary(max_size=300), min_size=1, max_size=8))
def test_the_newest_body_is_read(bodies: list[bytes]) -> None:
    slot = StatusSlot(capacity=300)
    for body in bodies:
        slot.write(body)
    assert slot.read() == bodies[-1]


def test_a_body_larger_than_the_slot_is_refused() -> None:
    slot = StatusSlot(capacity=8)
    assert slot.fits(b"12345678") and not slot.fits(b"123456789")
    with pytest.raises(ValueError):
        slot.write(b"123456789")


def test_a_write_under_way_or_a_torn_body_serves_the_last_whole_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(statusslot, "READ_TRIES", 3)
    slot = StatusSlot()
    slot.write(b'{"a":1}')
    assert slot.read() == b'{"a":1}'
    mapping = slot._map
    (seq,) = _SEQ.unpack_from(mapping, 0)
    # A write under way (the sequence number odd), even one whose length, CRC and
    # body are all in place already, is not read.
    _SEQ.pack_into(mapping, 0, seq + 1)
    _HEAD.pack_into(mapping, 8, 7, zlib.crc32(b'{"b":2}'))
    mapping[16:23] = b'{"b":2}'
    assert slot.read() == b'{"a":1}'
    # Even again, but the body is not the one whose CRC was written (stores seen out of order).
    _HEAD.pack_into(mapping, 8, 7, zlib.crc32(b'{"a":1}'))
    _SEQ.pack_into(mapping, 0, seq + 2)
    assert slot.read() == b'{"a":1}'
    # The write ended: read.
    _HEAD.pack_into(mapping, 8, 7, zlib.crc32(b'{"b":2}'))
    assert slot.read() == b'{"b":2}'


def test_a_process_forked_after_reads_what_the_writer_writes_later() -> None:
    slot = StatusSlot()
    slot.write(b"before")
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.read(ready_r, 1)  # wait for the parent's write
            os.write(done_w, slot.read() or b"-")
        finally:
            os._exit(0)
    slot.write(b"after the fork")
    os.write(ready_w, b"x")
    got = os.read(done_r, 100)
    os.waitpid(pid, 0)
    for fd in (ready_r, ready_w, done_r, done_w):
        os.close(fd)
    assert got == b"after the fork"
