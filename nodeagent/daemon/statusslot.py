"""The newest ``/status`` body in memory both processes share, read without waking anyone.

The agent renders a status body each load sample (every second). Sent as a
message, each one woke the serving process for nothing but to keep it: a
turn of its event loop, a read and an unpickling a second, 0.04-0.05 % of a
core of an idle agent's 0.23-0.26 %. Written here instead, it costs the
agent a copy, and the serving process reads it (1.4 µs) only when a
``/status`` request comes.

The slot is one anonymous shared mapping made before the fork: a sequence
number, the body's length and CRC-32, then the body. The one writer (the
agent's event loop) makes the number odd, writes, and makes it even again;
a reader takes the body only if the number was even and the same before
and after, and the CRC matches, so a body half written (or, where the CPU
reorders stores, written in another order than read) is never served.
Otherwise it tries again, and after :data:`READ_TRIES` serves the body it
read last (never more than a second old).
"""

from __future__ import annotations

import mmap
import struct
import zlib

__all__ = ["CAPACITY", "READ_TRIES", "StatusSlot"]

#: Bytes for a body. A status document is a few hundred; a larger body is refused.
CAPACITY = 1 << 16
#: Reads tried while the writer is busy before the last good body is served.
READ_TRIES = 1000
_SEQ = struct.Struct("=Q")
_HEAD = struct.Struct("=II")  # length, CRC-32
_BODY_AT = _SEQ.size + _HEAD.size


class StatusSlot:
    """One writer and any number of readers, in this process and in processes forked after."""

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        self._map = mmap.mmap(-1, _BODY_AT + capacity)  # MAP_SHARED: the fork shares it
        self._seq = 0
        self._last = b""

    def fits(self, body: bytes) -> bool:
        return len(body) <= self.capacity

    def write(self, body: bytes) -> None:
        """Publish ``body`` (the writer's side; at most :attr:`capacity` bytes)."""
        if not self.fits(body):
            raise ValueError("status body larger than the slot")
        m = self._map
        self._seq += 1  # odd: a write is under way
        _SEQ.pack_into(m, 0, self._seq)
        _HEAD.pack_into(m, _SEQ.size, len(body), zlib.crc32(body))
        m[_BODY_AT : _BODY_AT + len(body)] = body
        self._seq += 1  # even: done
        _SEQ.pack_into(m, 0, self._seq)

    def read(self) -> bytes:
        """The newest whole body (empty before the first write)."""
        m = self._map
        for _ in range(READ_TRIES):
            (before,) = _SEQ.unpack_from(m, 0)
            if before & 1:
                continue
            size, crc = _HEAD.unpack_from(m, _SEQ.size)
            body = m[_BODY_AT : _BODY_AT + min(size, self.capacity)]
            (after,) = _SEQ.unpack_from(m, 0)
            if before == after and size <= self.capacity and zlib.crc32(body) == crc:
                self._last = body
                return body
        return self._last

    def close(self) -> None:
        self._map.close()
