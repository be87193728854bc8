"""A large ``get=1`` reply, read off a real UNIX socket as it arrives, reads as the whole reply.

A few thousand peers make a reply of many socket reads: the digest and the
scrub read over those reads equal the whole-reply functions on the same text,
and so do the failures (a daemon that hangs up half way).
"""

from __future__ import annotations

import contextlib
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.core.backend import BackendError
from nodeagent.wireguard.uapi import backend as uapi_backend
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.idle import UapiScrubPort, idle_from_reply
from tests.fuzz.test_fuzz_uapi import NOW
from tests.peerdata import make_peers

PEERS = 3000


def big_reply() -> str:
    """As wireguard-go writes it. Every other peer has an endpoint; every other one of those
    has been quiet for 500 s (idle at NOW), the others shook hands 10 s ago."""
    lines = ["listen_port=51820"]
    for i, p in enumerate(make_peers(PEERS).values()):
        lines += [f"public_key={p.public_key.hex()}", "protocol_version=1"]
        if p.preshared_key:
            lines.append(f"preshared_key={p.preshared_key.hex()}")
        if i % 2:
            lines.append("endpoint=192.0.2.1:51820")
        sec = int(NOW) - (500 if i % 4 == 1 else 10)
        lines += [f"last_handshake_time_sec={sec}", "last_handshake_time_nsec=0",
                  "tx_bytes=1", "rx_bytes=2", "persistent_keepalive_interval=0"]  # fmt: skip
        lines += [f"allowed_ip={ip}" for ip in p.allowed_ips]
    return "\n".join([*lines, "errno=0"]) + "\n\n"


class OneReplyDaemon:
    """A UAPI socket that answers every connection with ``parts``, sent apart (0.05 s between)."""

    def __init__(self, path: str, *parts: bytes) -> None:
        self.path = path
        self._parts = parts
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(path)
        self._listener.listen(4)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            # A client may hang up before the end (a read refuses a bad line as it
            # reaches it); wireguard-go then drops that connection and serves the next.
            with conn, contextlib.suppress(BrokenPipeError, ConnectionResetError):
                conn.recv(64)
                for i, part in enumerate(self._parts):
                    if i:
                        time.sleep(0.05)  # read apart: the client has seen what came before
                    conn.sendall(part)

    def close(self) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()


@pytest.fixture
def sock_dir() -> Iterator[Path]:
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="na-", dir="/tmp") as tmp:
        yield Path(tmp)


def test_digest_and_scrub_read_as_the_reply_arrives(sock_dir: Path) -> None:
    text = big_reply()
    assert len(text) > 8 * uapi_backend._CHUNK, "not a reply of many reads"
    daemon = OneReplyDaemon(str(sock_dir / "wgs.sock"), text.encode())
    try:
        backend = UapiBackend("wgs", daemon.path)
        assert backend.config_digest() == uapi_text.reply_digest(text)[0]
        idle = UapiScrubPort(backend, clock=lambda: NOW).idle_peers(180.0)
        assert len(idle) == PEERS // 4
        assert idle == idle_from_reply(text, 180.0, NOW)
        assert backend.read() == uapi_text.parse_get_reply(text)[0]
    finally:
        daemon.close()


def test_a_daemon_that_hangs_up_half_way_is_a_failed_read(sock_dir: Path) -> None:
    text = big_reply()
    daemon = OneReplyDaemon(str(sock_dir / "wgh.sock"), text[: len(text) // 2].encode())
    try:
        backend = UapiBackend("wgh", daemon.path)
        for call in (backend.config_digest, lambda: backend.idle_peers(180.0), backend.read):
            with pytest.raises(BackendError, match=r"connection closed|failed on the UAPI socket"):
                call()
    finally:
        daemon.close()


@pytest.mark.parametrize(
    "split", [1, 2, 3], ids=["last newline alone", "blank line alone", "errno line apart"]
)
def test_the_reply_ends_at_its_blank_line_however_it_arrives(sock_dir: Path, split: int) -> None:
    text = big_reply()
    cut = len(text) - (1, 2, len("errno=0\n\n"))[split - 1]
    daemon = OneReplyDaemon(str(sock_dir / "wge.sock"), text[:cut].encode(), text[cut:].encode())
    try:
        backend = UapiBackend("wge", daemon.path, timeout=5)
        assert backend.config_digest() == uapi_text.reply_digest(text)[0]
    finally:
        daemon.close()


def test_a_blank_line_inside_a_reply_ends_no_read_early_and_is_refused(sock_dir: Path) -> None:
    """Not taken for the reply's end: the read refuses it, the digest differs."""
    text = big_reply()
    middle = text.index("\npublic_key=", len(text) // 2)
    broken = text[:middle] + "\n" + text[middle:]
    daemon = OneReplyDaemon(str(sock_dir / "wgb.sock"), broken.encode())
    try:
        backend = UapiBackend("wgb", daemon.path, timeout=10)
        with pytest.raises(BackendError, match="get: "):
            backend.read()
        # Never the clean reply's digest: a drift check reads back, and that read refuses it.
        assert backend.config_digest() != uapi_text.reply_digest(text)[0]
    finally:
        daemon.close()
