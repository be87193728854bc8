"""close() from another thread ends a backend call in flight at once, whatever the other end does.

The agent's passes run in worker threads, and a thread blocked on a socket
keeps asyncio.run (its default executor) and the process from exiting: a
wedged wireguard-go or kernel would outlast systemd's stop timeout. On the way
out the agent closes its backends under such a call; the call must then fail
with a BackendError that says "closed", and send nothing more.

Real sockets, no privileges: a UAPI stand-in on an AF_UNIX socket that accepts
and never answers, and for the kernel backend one end of a datagram socketpair
in place of the netlink socket (the WireGuard module is absent on this host;
the kernel's netlink answers every request at once, a socketpair never does).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nodeagent.core.model import Plan
from nodeagent.privacy.scrub import scrub_once
from nodeagent.wireguard import BackendError
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.netlink.backend import KernelBackend
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.peerdata import make_peers

FAMILY = 0x1D  # any id: nothing on the other end reads it


class SilentDaemon:
    """A UAPI socket that accepts connections, reads what they send, and never answers."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.requested = threading.Event()  # a client sent its request and waits for a reply
        self.hung_up = threading.Event()  # every client so far has closed its connection
        self.open = 0
        self.requests: list[bytes] = []  # the first line each client sent
        self._conns: set[socket.socket] = set()
        self._thread = threading.Thread(target=self._serve, name="silent-uapi", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self.open += 1
                self._conns.add(conn)
                self.hung_up.clear()
            threading.Thread(target=self._drain, args=(conn,), daemon=True).start()

    def _drain(self, conn: socket.socket) -> None:
        first = True
        with conn:
            conn.settimeout(120)  # far past any timeout the agent uses
            try:
                while chunk := conn.recv(1 << 16):
                    if first:
                        with self._lock:
                            self.requests.append(chunk.split(b"\n", 1)[0])
                        self.requested.set()
                        first = False
            except OSError:
                pass
        with self._lock:
            self._conns.discard(conn)
            self.open -= 1
            if self.open == 0:
                self.hung_up.set()

    def hang_up(self) -> None:
        """End every connection from this side (frees a client that would wait forever)."""
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        self.hang_up()


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="na-", dir="/tmp") as d:
        yield Path(d)


@pytest.fixture
def daemon(short_dir: Path) -> Iterator[SilentDaemon]:
    d = SilentDaemon(short_dir / "wgsilent0.sock")
    yield d
    d.close()


def run_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def assert_ended_closed(thread: threading.Thread, errors: list[BaseException]) -> None:
    # Generous: the calls under test would otherwise wait 60 s (UAPI) or 300 s (netlink).
    thread.join(20)
    assert not thread.is_alive(), "the call in flight did not end after close()"
    assert len(errors) == 1 and isinstance(errors[0], BackendError), errors
    assert str(errors[0]).endswith("closed"), str(errors[0])


# --- userspace: UapiBackend ------------------------------------------------------


def test_uapi_close_ends_a_read_the_daemon_never_answers(daemon: SilentDaemon) -> None:
    backend = UapiBackend("wgsilent0", daemon.path)
    thread, errors = run_in_thread(backend.read)
    assert daemon.requested.wait(10)
    backend.close()
    assert_ended_closed(thread, errors)
    assert daemon.hung_up.wait(10), "the connection stayed open"
    # Closed for good: no new connection either.
    with pytest.raises(BackendError, match=r"closed$"):
        backend.read()
    assert daemon.requests == [b"get=1"]


def test_uapi_close_reaches_the_scrub_ports_connection(daemon: SilentDaemon) -> None:
    """The scrubber talks to the daemon through the backend, so close() ends its pass too."""
    backend = UapiBackend("wgsilent0", daemon.path)
    thread, errors = run_in_thread(lambda: scrub_once(backend, 180.0))
    assert daemon.requested.wait(10)
    backend.close()
    assert_ended_closed(thread, errors)
    assert daemon.hung_up.wait(10)


def test_uapi_close_twice_and_before_any_call() -> None:
    backend = UapiBackend("wgsilent1", "/nonexistent/wgsilent1.sock")
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match=r"closed$"):
        backend.apply(Plan(add=tuple(make_peers(1).values())))


# --- kernel: KernelBackend on a socketpair ---------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    kernel.settimeout(10)
    yield ours, kernel
    ours.close()
    kernel.close()


def kernel_backend(ours: socket.socket, **kwargs: int) -> KernelBackend:
    return KernelBackend("wgsilent2", connect=lambda: (ours, FAMILY), **kwargs)


def test_kernel_close_wakes_a_dump_waiting_for_its_reply(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, kernel = pair
    backend = kernel_backend(ours)
    thread, errors = run_in_thread(backend.read)
    request = kernel.recv(1 << 16)  # the GET_DEVICE dump is out: the thread waits in recv
    assert [m.type for m in nlwire.iter_messages(request)] == [FAMILY]
    backend.close()
    assert_ended_closed(thread, errors)
    assert ours.fileno() == -1, "the call in flight left its socket open"
    with pytest.raises(BackendError, match=r"closed$"):
        backend.read()


def test_kernel_close_during_an_apply_sends_no_further_batch(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """The batch already sent stands (the kernel applies it whole); the rest is never sent."""
    ours, kernel = pair
    backend = kernel_backend(ours, max_message=1024, batch_bytes=1024)
    plan = Plan(add=tuple(make_peers(200).values()))
    thread, errors = run_in_thread(lambda: backend.apply(plan))
    kernel.recv(1 << 16)  # the first batch; its acks never come
    backend.close()
    assert_ended_closed(thread, errors)
    kernel.settimeout(0.5)
    with pytest.raises(TimeoutError):
        kernel.recv(1 << 16)
    assert backend.messages_sent == 1


def test_kernel_close_without_a_call_in_flight(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, kernel = pair
    backend = kernel_backend(ours)
    backend.close()
    backend.close()
    with pytest.raises(BackendError, match=r"closed$"):
        backend.apply(Plan(add=tuple(make_peers(1).values())))
    kernel.settimeout(0.2)
    with pytest.raises(TimeoutError):
        kernel.recv(1 << 16)
