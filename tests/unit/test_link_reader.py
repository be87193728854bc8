"""LinkReader on a real rtnetlink socket, and on a scripted one.

The sampler closes its reader when its task is cancelled (a reload, the agent
stopping) while the cancelled task's worker thread may still be inside the
read: a close() under a read in flight must not hang it nor close the socket
under it. Needs no privileges: it reads this namespace's loopback link.
"""

from __future__ import annotations

import errno
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from nodeagent.load.counters import CounterError, LinkCounters, LinkMessage, LinkReader


def test_close_during_reads_never_strands_the_reading_thread() -> None:
    reader = LinkReader()
    stop = threading.Event()
    reads = [0]

    def keep_reading() -> None:
        while not stop.is_set():
            assert "lo" in reader.read(["lo"])
            reads[0] += 1

    thread = threading.Thread(target=keep_reading, daemon=True)
    thread.start()
    try:
        for trial in range(200):
            time.sleep(0.0005 * (trial % 7))
            reader.close()
        stop.set()
        thread.join(timeout=20)
        assert not thread.is_alive(), "a read never returned after close()"
    finally:
        stop.set()
    assert reads[0] > 0
    reader.close()
    assert reader._sock is None  # nothing left open


def test_close_in_flight_is_done_by_the_read() -> None:
    """A close() that arrives during a read takes effect when that read returns."""
    reader = LinkReader()
    reader.read(["lo"])
    opened = reader._sock
    assert opened is not None
    started, release = threading.Event(), threading.Event()
    real_ask = reader._ask

    def slow_ask(sock: socket.socket, name: str) -> LinkMessage | None:
        started.set()
        release.wait(10)
        return real_ask(sock, name)

    reader._ask = slow_ask  # type: ignore[method-assign]
    thread = threading.Thread(target=reader.read, args=(["lo"],), daemon=True)
    thread.start()
    assert started.wait(10)
    reader.close()
    assert reader._sock is opened and opened.fileno() >= 0, "not closed under the read"
    release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert reader._sock is None and opened.fileno() == -1, "closed once the read returned"
    del reader._ask
    assert "lo" in reader.read(["lo"]), "a later read opens a fresh socket"
    reader.close()


def test_reads_this_namespace_links_over_one_socket() -> None:
    reader = LinkReader()
    try:
        first = reader.read(["lo", "nosuchlink0", "not a name", "x" * 40])
        sock = reader._sock
        second = reader.read(["lo"])
        assert reader._sock is sock, "the socket stays open between samples"
    finally:
        reader.close()
    assert set(first) == {"lo"}, "a missing or impossible link is absent, not a failure"
    lo = Path("/sys/class/net/lo")
    if lo.exists():
        assert first["lo"].ifindex == int((lo / "ifindex").read_text())
    assert second["lo"].ifindex == first["lo"].ifindex
    assert second["lo"].rx_bytes >= first["lo"].rx_bytes


# --- a scripted rtnetlink socket -------------------------------------------------------


def _nla(kind: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, kind) + payload + bytes(-n % 4)


def _newlink(seq: int, index: int, name: str, rx: int = 10, tx: int = 20) -> bytes:
    body = struct.pack("=BBHiII", 0, 0, 1, index, 0x1043, 0) + _nla(3, name.encode() + b"\0")
    body += _nla(23, struct.pack("=24Q", 1, 2, rx, tx, *[0] * 20))
    return struct.pack("=IHHII", 16 + len(body), 16, 0, seq, 0) + body


def _error(seq: int, code: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 2, 0, seq, 0, -code)


class Scripted:
    """A reader whose socket is one end of a datagram pair; the test holds the other."""

    def __init__(self) -> None:
        self.reader = LinkReader()
        self.ours, self.kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ours.settimeout(2)
        self.reader._open = lambda: self.ours  # type: ignore[method-assign]
        self.reader._seq = 100

    def next_seq(self, k: int = 1) -> int:
        return self.reader._seq + k

    def answer(self, *datagrams: bytes) -> None:
        for d in datagrams:
            self.kernel.send(d)

    def requests(self) -> list[bytes]:
        out = []
        self.kernel.setblocking(False)
        try:
            while True:
                out.append(self.kernel.recv(4096))
        except BlockingIOError:
            return out
        finally:
            self.kernel.setblocking(True)

    def close(self) -> None:
        self.reader.close()
        self.kernel.close()


@pytest.fixture
def scripted() -> Scripted:
    s = Scripted()
    yield s  # type: ignore[misc]
    s.close()


def test_stale_answers_are_skipped(scripted: Scripted) -> None:
    seq = scripted.next_seq()
    # A late answer to an earlier request, then this one's (both in one datagram too).
    scripted.answer(
        _newlink(seq - 1, 7, "eth0", 1, 1),
        _newlink(seq - 5, 7, "eth0") + _newlink(seq, 2, "eth0", 5, 6),
    )
    assert scripted.reader.read(["eth0"]) == {"eth0": LinkCounters(2, 5, 6)}
    (request,) = scripted.requests()
    assert struct.unpack_from("=IHHII", request)[1:4] == (18, 1, seq)


def test_missing_link_and_other_names(scripted: Scripted) -> None:
    seq = scripted.next_seq()
    scripted.answer(_error(seq, errno.ENODEV), _newlink(seq + 1, 3, "enp1s0"))
    # eth1 is an alternative name of enp1s0: the kernel answers with the link, which is
    # not named eth1 (a dump, as before, would not have listed it under that name).
    assert scripted.reader.read(["eth0", "eth1"]) == {}
    assert scripted.reader._sock is scripted.ours, "an absent link is no failure"


@pytest.mark.parametrize(
    "answer",
    [
        lambda seq: _error(seq, errno.EPERM),
        lambda seq: struct.pack("=IHHII", 18, 2, 0, seq, 0) + b"\0\0",  # truncated error
        lambda seq: _newlink(seq, 2, "eth0")[:-8],  # truncated message
        lambda seq: struct.pack("=IHHII", 20, 16, 0, seq, 0) + bytes(4),  # no ifinfomsg
        lambda seq: b"\x01" * 70000,  # larger than any link message
        lambda seq: b"".join(_newlink(seq + 1, 2, "eth0") for _ in range(70)),
    ],
    ids=["errno", "short-error", "truncated", "no-ifinfomsg", "too-large", "never-answered"],
)
def test_failures_drop_the_socket(scripted: Scripted, answer: object) -> None:
    seq = scripted.next_seq()
    data = answer(seq)  # type: ignore[operator]
    if len(data) > 65536 or data.count(b"eth0") < 2:
        scripted.answer(data)
    else:  # one stale message a datagram, more of them than a read waits for
        scripted.answer(*(_newlink(seq + 1, 2, "eth0") for _ in range(70)))
    with pytest.raises(CounterError) as e:
        scripted.reader.read(["eth0"])
    assert "eth0" not in str(e.value)
    assert scripted.reader._sock is None and scripted.ours.fileno() == -1


def test_timeout_is_a_failure(scripted: Scripted) -> None:
    scripted.ours.settimeout(0.05)
    with pytest.raises(CounterError):
        scripted.reader.read(["eth0"])
    assert scripted.reader._sock is None
