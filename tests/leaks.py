"""The leak test's harness, shared by the netns tier (wireguard-go) and the kernel tier (VM).

A tier builds a :class:`Site`: a server interface and three clients at known
addresses, in namespaces. :func:`run_agent` then runs ``python -m nodeagent
run`` against it at debug level with HTTP on, a collector that refuses every
push, and a feed server that first errors, then serves a bad document full of
the clients' real keys, then the good one. Every byte the agent logged,
served, pushed or wrote to disk is collected, to be searched with
:meth:`Secrets.search` for every key (base64 and hex), endpoint address and
tunnel address.

Also runnable as ``python -m tests.leaks run -c FILE``: the agent with a
test-only leak planted (``NODEAGENT_PLANT_LEAK=fd|print|disk|log|openvpn``), so that a
test can show the search catches what a careless change would emit.
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from nodeagent.core.model import Peer, format_key
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.lab.netns import Namespace
from nodeagent.wireguard import Backend, BackendError
from tests.daemon import free_port
from tests.peerdata import feed_document

MAX_FILE = 16 << 20
SERVER_TUNNEL = "10.77.0.1"
PORT = 51820
AGENT = [sys.executable, "-m", "nodeagent"]
PLANTED = [sys.executable, "-m", "tests.leaks"]


# --- what to search for, and where ------------------------------------------


@dataclass
class Secrets:
    """Every needle, as the bytes it would appear as (keys in base64 and hex)."""

    needles: dict[str, bytes] = field(default_factory=dict)

    def key(self, label: str, key: bytes) -> None:
        self.needles[f"{label} (base64)"] = base64.b64encode(key)
        self.needles[f"{label} (base64, unpadded)"] = base64.b64encode(key).rstrip(b"=")
        self.needles[f"{label} (url-safe base64)"] = base64.urlsafe_b64encode(key).rstrip(b"=")
        self.needles[f"{label} (hex)"] = key.hex().encode()

    def address(self, label: str, text: str) -> None:
        addr = ipaddress.ip_address(text)
        self.needles[label] = str(addr).encode()
        if addr.version == 6:
            self.needles[f"{label} (exploded)"] = addr.exploded.encode()
        self.needles[f"{label} (packed hex)"] = addr.packed.hex().encode()

    def search(self, haystacks: Iterable[tuple[str, bytes]]) -> list[str]:
        """ "<needle> in <source>" for every hit; empty when nothing leaked. Never prints values."""
        hits: list[str] = []
        for source, data in haystacks:
            low = data.lower()
            for label, needle in self.needles.items():
                hay = low if needle.isascii() and "hex" in label else data
                if needle in hay:
                    hits.append(f"{label} in {source}")
        return hits


def snapshot(roots: Iterable[Path]) -> dict[Path, tuple[int, int]]:
    """(size, mtime_ns) of every regular file under ``roots``."""
    out: dict[Path, tuple[int, int]] = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root, onerror=lambda e: None):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for name in filenames:
                p = Path(dirpath, name)
                try:
                    st = p.lstat()
                except OSError:
                    continue
                if p.is_file() and not p.is_symlink():
                    out[p] = (st.st_size, st.st_mtime_ns)
    return out


def changed_files(
    before: dict[Path, tuple[int, int]], after: dict[Path, tuple[int, int]]
) -> Iterator[tuple[str, bytes]]:
    """The contents of files created or modified between two snapshots."""
    for p, meta in after.items():
        if before.get(p) == meta or meta[0] > MAX_FILE:
            continue
        try:
            yield f"file {p}", p.read_bytes()
        except OSError:
            continue


# --- the site: a server and its clients -------------------------------------


@dataclass
class Client:
    ns: Namespace
    public: bytes
    psk: bytes | None
    endpoint: str  # the client's own address, which the server learns
    tunnel_ip: str

    def ping(self, count: int = 5) -> subprocess.CompletedProcess[str]:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", SERVER_TUNNEL]
        return self.ns.run(argv, check=False, timeout=60)


@dataclass
class Site:
    """A WireGuard server the agent manages, and clients that use it."""

    interface: str
    config_entry: str  # the interface's entry in wireguard.interfaces, as a YAML flow mapping
    backend: Backend  # the test's own view of the server's peers
    show_endpoints: Callable[[], str]  # ``wg show IFACE endpoints``, where the server lives
    clients: list[Client]

    def peers(self) -> dict[bytes, Peer]:
        return {
            c.public: Peer(c.public, frozenset({AllowedIP.parse(f"{c.tunnel_ip}/32")}), c.psk)
            for c in self.clients
        }

    def secrets(self) -> Secrets:
        s = Secrets()
        for i, c in enumerate(self.clients):
            s.key(f"client{i} public key", c.public)
            if c.psk:
                s.key(f"client{i} preshared key", c.psk)
            s.address(f"client{i} endpoint", c.endpoint)
            s.address(f"client{i} tunnel ip", c.tunnel_ip)
        return s


def client_plan(i: int) -> tuple[str, str, str, str]:
    """Client ``i``'s (server-side, client-side) /30 IPv4 pair and IPv6 pair on its own link.

    Client 2 reaches the server over IPv6; the others over IPv4.
    """
    return (
        f"198.51.100.{4 * i + 1}",
        f"198.51.100.{4 * i + 2}",
        f"2001:db8:77:{i}::1",
        f"2001:db8:77:{i}::2",
    )


def bracketed(address: str) -> str:
    return f"[{address}]" if ":" in address else address


# --- the central side: a feed that misbehaves, a collector that refuses ------


class Central:
    """The feed server (errors, then a bad document, then the good one) and a refusing collector."""

    def __init__(self, good: str, bad: str) -> None:
        self.good, self.bad = good, bad
        self.feed_requests = 0
        self.pushes: list[bytes] = []
        central = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _send(self, code: int, body: bytes = b"") -> None:
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # The agent may abandon a long poll when it stops.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.wfile.write(body)

            def do_GET(self) -> None:
                central.feed_requests += 1
                n = central.feed_requests
                since = parse_qs(urlparse(self.path).query).get("since", [""])[0]
                if n <= 2:
                    self._send(500, b"internal error")
                elif n == 3:
                    self._send(200, central.bad.encode())
                elif since == "good1":
                    time.sleep(0.5)
                    self._send(304)
                else:
                    self._send(200, central.good.encode())

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                central.pushes.append(str(self.headers).encode() + body)
                self._send(503, b"collector overloaded")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Central:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def bad_document(site: Site) -> str:
    """The clients' real keys, with a tunnel address given to two peers: rejected whole."""
    doc = json.loads(feed_document(site.peers(), site.interface, "bad1"))
    peers = doc["wireguard"][site.interface]["peers"]
    peers[1]["allowed_ips"] = peers[0]["allowed_ips"]
    peers.append({"public_key": format_key(site.clients[2].public)[:-2] + "!=",
                  "allowed_ips": [f"{site.clients[2].endpoint}/64"]})  # fmt: skip
    return json.dumps(doc)


# --- running the agent --------------------------------------------------------


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def fetch(url: str, method: str = "GET") -> bytes:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.headers).encode() + bytes(r.read())
    except urllib.error.HTTPError as e:
        return str(e.headers).encode() + e.read()


# How long the agent may take to converge: generous, since the VM runs ~10x slower.
CONVERGE_S = 300.0


def wait_for(cond: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def converged(site: Site) -> bool:
    """The server holds exactly the clients (False while its link does not exist yet)."""
    try:
        return plan(site.peers(), site.backend.read().peers).empty
    except BackendError:
        return False


@dataclass
class Run:
    site: Site
    log: bytes
    served: list[tuple[str, bytes]]
    pushed: list[bytes]
    files: list[tuple[str, bytes]]

    def haystacks(self) -> Iterator[tuple[str, bytes]]:
        yield "the agent's log", self.log
        yield from self.served
        for i, body in enumerate(self.pushed):
            yield f"push #{i}", body
        yield from self.files


def run_agent(site: Site, tmp_path: Path, argv_head: list[str], env: dict[str, str]) -> Run:
    """Run the agent against ``site`` through every path that could leak; collect its output."""
    good = feed_document(site.peers(), site.interface, "good1")
    cwd, tmp, home = tmp_path / "cwd", tmp_path / "tmp", tmp_path / "home"
    for d in (cwd, tmp, home):
        d.mkdir()
    http_port = free_port()
    with Central(good, bad_document(site)) as central:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"node: {{name: leak-01}}\n"
            f"wireguard:\n  resync_interval: 1s\n  interfaces:\n    - {site.config_entry}\n"
            f"feed: {{url: 'http://127.0.0.1:{central.port}/feed', long_poll: 2s, "
            f"token_file: {secret_file(tmp_path / 'feed.token', 'feed-token')}}}\n"
            f"load: {{interfaces: [lo], capacity: 1Gbit, sample_interval: 1s, window: 2s}}\n"
            f"http: {{listen: ['127.0.0.1:{http_port}']}}\n"
            f"push: {{url: 'http://127.0.0.1:{central.port}/push', interval: 1s, "
            f"secret_file: {secret_file(tmp_path / 'push.secret', 'push-secret')}}}\n"
            f"log: {{level: debug}}\n"
        )
        # The agent's HOME is a fresh directory: the real one may be too big to walk.
        roots = [cwd, tmp, home, Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev/shm")]
        before = snapshot(roots)
        log_path = tmp_path / "agent.log"
        with log_path.open("wb") as out:
            agent = subprocess.Popen(
                [*argv_head, "run", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                env={**os.environ, "TMPDIR": str(tmp), "HOME": str(home),
                     "PYTHONPATH": os.getcwd(), "PYTHONFAULTHANDLER": "1", **env},
            )  # fmt: skip
        try:
            try:
                # A deadline, not a speed: inside the kernel tier's VM the agent's imports
                # alone take ~30 s and everything runs ~10x slower than on the host.
                wait_for(lambda: agent.poll() is not None or converged(site), CONVERGE_S)
                assert agent.poll() is None, f"the agent exited with {agent.returncode}"
            except AssertionError:
                tail = log_path.read_bytes()[-6000:].decode(errors="replace")
                raise AssertionError(f"the agent did not converge; its log ends:\n{tail}") from None
            for c in site.clients:
                assert c.ping().returncode == 0, "every client passes traffic"
            shown = site.show_endpoints()
            assert all(c.endpoint in shown for c in site.clients), "endpoints are known"
            time.sleep(3)  # resyncs, load samples and pushes with endpoints in the kernel
            base = f"http://127.0.0.1:{http_port}"
            served = [(f"GET {p}", fetch(base + p))
                      for p in ("/status", "/metrics", "/healthz", "/readyz", "/nope")]  # fmt: skip
            served.append(("POST /status", fetch(base + "/status", "POST")))
            assert central.feed_requests >= 4 and central.pushes
        finally:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=60)
            except subprocess.TimeoutExpired:
                # SIGABRT: faulthandler writes every thread's stack into the log first.
                agent.send_signal(signal.SIGABRT)
                try:
                    agent.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    agent.kill()
                    agent.wait()
                tail = log_path.read_bytes()[-6000:].decode(errors="replace")
                raise AssertionError(
                    f"agent did not exit on SIGTERM; its log ends:\n{tail}"
                ) from None
        files = list(changed_files(before, snapshot(roots)))
        return Run(site, log_path.read_bytes(), served, central.pushes, files)


def assert_nothing_leaked(run: Run) -> None:
    """The run went through the paths that could leak, and none named a client."""
    text = run.log.decode(errors="replace")
    assert "DEBUG" in text, "the agent logged at debug level"
    assert "peer_sync applied" in text
    assert "feed_error kind=invalid" in text, "the bad document with real keys was rejected"
    assert "feed_error kind=http_status" in text and "push failed" in text
    assert b'"load"' in run.served[0][1] and b"nodeagent_" in run.served[1][1]
    hits = run.site.secrets().search(run.haystacks())
    assert hits == [], hits


# --- the planted leak -----------------------------------------------------------


def _plant() -> None:
    """A deliberate leak of each peer's endpoint, the shape a careless debug line would take.

    It wraps the agent's reconcile pass, whatever the backend, and reads the
    endpoints the way an operator would (``wg show``).
    """
    import logging

    from nodeagent.daemon import reconcile

    mode = os.environ.get("NODEAGENT_PLANT_LEAK", "")
    original = reconcile.sync_interface  # type: ignore[attr-defined]
    log = logging.getLogger("nodeagent.daemon.reconcile")

    def sync_interface(backend: Backend, *args: object, **kwargs: object) -> object:
        outcome = original(backend, *args, **kwargs)  # type: ignore[arg-type]
        shown = subprocess.run(
            ["wg", "show", backend.interface, "endpoints"], capture_output=True, text=True
        ).stdout
        for line in shown.splitlines():
            endpoint = line.partition("\t")[2]
            if mode == "fd":
                # Straight to file descriptor 2, as C code would: past Python's streams.
                os.write(2, f"debug endpoint {endpoint}\n".encode())
            elif mode == "print":
                print(f"debug endpoint {endpoint}", file=sys.stderr, flush=True)
            elif mode == "disk":
                with open("peers.debug", "a") as f:
                    f.write(endpoint + "\n")
            elif mode == "log":
                log.debug("peer endpoint=%s", endpoint)
        return outcome

    reconcile.sync_interface = sync_interface  # type: ignore[attr-defined,assignment]
    if mode == "openvpn":
        _plant_openvpn()


def _plant_openvpn() -> None:
    """The username of every OpenVPN login at debug level: what a careless auth line would log."""
    import logging

    from nodeagent.openvpn import instance

    original = instance.Instance._authenticate
    log = logging.getLogger("nodeagent.openvpn.instance")

    async def authenticate(self: instance.Instance, ev: instance.ClientAuth) -> None:
        log.debug("openvpn login user=%s", ev.username)
        await original(self, ev)

    instance.Instance._authenticate = authenticate  # type: ignore[method-assign]


if __name__ == "__main__":
    _plant()
    from nodeagent.cli.main import main

    sys.exit(main(sys.argv[1:]))
