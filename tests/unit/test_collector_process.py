"""`nodeagent collector` as a process: SIGHUP reloads (a bad file keeps the old), SIGTERM exits 0,
and no line it writes holds a request's origin or a secret, whatever the requests were."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import signed_headers
from nodeagent.publish.status import encode, status_document
from tests.daemon import free_port


def write_config(tmp: Path, port: int, nodes: list[str]) -> Path:
    lines = [
        f"collector: {{listen: ['127.0.0.1:{port}'], database: {tmp}/h.sqlite, stale_after: 60s}}",
        "log: {level: debug}",
        "nodes:",
    ]
    for name in nodes:
        lines.append(
            f"  - {{name: {name}, host: {name}.example.net, city: C, country: C, "
            f"country_code: cc, secret_file: {tmp}/{name}.secret}}"
        )
    path = tmp / "collector.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


_last = [0]


def push(port: int, node: str, secret: bytes, body: bytes | None = None) -> int:
    """One signed push; each a second after the last (the collector refuses repeats)."""
    if body is None:
        report = LoadReport(20, 20, 3, 2000, 1000, 10_000, 60)
        body = encode(status_document(node, "0.1.0", datetime.now(UTC), report))
    _last[0] = ts = max(int(time.time()), _last[0] + 1)
    headers = signed_headers(node, secret, ts, body)
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/push", data=body, headers=headers, method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def raw(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.settimeout(2)
        try:
            while s.recv(65536):
                pass
        except (TimeoutError, ConnectionResetError):
            pass


def wait_up(port: int, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert proc.poll() is None, "the collector exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5):
                return
        except OSError:
            assert time.monotonic() < deadline, "the collector did not come up"
            time.sleep(0.1)


def test_reload_exit_and_no_origin_in_any_line(tmp_path: Path) -> None:
    for name, text in (("a-01", "first-secret"), ("b-01", "second-secret")):
        (tmp_path / f"{name}.secret").write_text(text + "\n")
        (tmp_path / f"{name}.secret").chmod(0o600)
    port = free_port()
    config = write_config(tmp_path, port, ["a-01"])
    log = tmp_path / "collector.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "collector", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_up(port, proc)
        assert push(port, "a-01", b"first-secret") == 204
        assert push(port, "a-01", b"wrong") == 401
        assert push(port, "a-01", b"first-secret", b'{"node": "a-01"}') == 400
        assert push(port, "b-01", b"second-secret") == 401  # not configured yet
        for data in (
            b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(100),
            b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
            b"POST /api/v1/push HTTP/1.1\r\nContent-Length: 999999999\r\n\r\nxx",
            b"GET / HTTP/1.1\r\nHost: [2001:db8::1]\r\n" + b"X: y\r\n" * 2000 + b"\r\n",
        ):
            raw(port, data)

        # A broken file: the old configuration stays.
        good = config.read_text()
        config.write_text(good.replace("nodes:", "nodes: 3\nextra:"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert push(port, "a-01", b"first-secret") == 204
        # A good one: the new node is taken.
        write_config(tmp_path, port, ["a-01", "b-01"])
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while push(port, "b-01", b"second-secret") != 204:
            assert time.monotonic() < deadline, "the reload was not taken"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "config_reload refused problems=" in text
    assert "config_reload done nodes=2" in text
    assert "collector stopped" in text
    for forbidden in ("127.0.0.1", "203.0.113.9", "2001:db8", "first-secret", "second-secret"):
        assert forbidden not in text, (forbidden, text)
