"""Leak test: clients at known addresses use the tunnel; nothing the agent emits names them.

The agent runs as ``python -m nodeagent run`` at debug level with HTTP on, a
collector that refuses every push, and a feed server that first errors, then
serves a bad document full of the clients' real keys, then the good one. Every
byte it logged, served, pushed or wrote to disk is then searched for every
client's public and preshared key (base64 and hex), endpoint address and
tunnel address. A companion test plants a leak and shows the search finds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from nodeagent.lab.netns import Lab, Namespace, WireguardGo, genkey, veth_pair
from nodeagent.model import AllowedIP, Peer, format_key
from nodeagent.reconcile import plan
from nodeagent.wireguard.uapi import UapiBackend
from tests.netns.leakcheck import Secrets, changed_files, snapshot
from tests.peerdata import feed_document, key

SERVER_TUNNEL = "10.77.0.1"
PORT = 51820


@dataclass
class Client:
    ns: Namespace
    wg: WireguardGo
    public: bytes
    psk: bytes | None
    endpoint: str  # the client's own address, which the server learns
    server_address: str  # where the client reaches the server
    tunnel_ip: str

    def ping(self, count: int = 5) -> subprocess.CompletedProcess[str]:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", "0.2", "-W", "2", SERVER_TUNNEL]
        return self.ns.run(argv, check=False, timeout=60)


@dataclass
class Site:
    server_ns: Namespace
    server: WireguardGo
    server_public: bytes
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


def build_site(lab: Lab) -> Site:
    """A server and three clients on their own veth links: two over IPv4, one over IPv6."""
    server_ns = lab.namespace("nls")
    server = lab.wireguard_go(server_ns, "wgs")
    server_private, server_public = genkey()
    server.uapi_set([f"private_key={server_private.hex()}", f"listen_port={PORT}"])
    server.up(f"{SERVER_TUNNEL}/24")
    clients: list[Client] = []
    for i in range(3):
        ns = lab.namespace("nlc")
        a, b = f"198.51.100.{4 * i + 1}", f"198.51.100.{4 * i + 2}"
        veth_pair(server_ns, ns, address_a=f"{a}/30", address_b=f"{b}/30", name_a=f"vc{i}")
        if i == 2:  # this one reaches the server over IPv6
            a, b = f"2001:db8:77:{i}::1", f"2001:db8:77:{i}::2"
            server_ns.ip("addr", "add", f"{a}/64", "dev", f"vc{i}", "nodad")
            ns.ip("addr", "add", f"{b}/64", "dev", "veth0", "nodad")
        wg = lab.wireguard_go(ns, "wgc")
        private, public = genkey()
        psk = key("leak-psk", i) if i != 1 else None
        tunnel_ip = f"10.77.0.{10 + i}"
        host = f"[{a}]" if ":" in a else a
        lines = [f"private_key={private.hex()}", f"public_key={server_public.hex()}"]
        if psk:
            lines.append(f"preshared_key={psk.hex()}")
        lines += [f"endpoint={host}:{PORT}", "replace_allowed_ips=true", "allowed_ip=10.77.0.0/24"]
        wg.uapi_set(lines)
        wg.up(f"{tunnel_ip}/32")
        ns.ip("route", "add", "10.77.0.0/24", "dev", wg.name)
        clients.append(Client(ns, wg, public, psk, b, a, tunnel_ip))
    return Site(server_ns, server, server_public, clients)


class Central:
    """The feed server (errors, then a bad document, then the good one) and a refusing collector."""

    def __init__(self, good: str, bad: str) -> None:
        self.good, self.bad = good, bad
        self.feed_requests = 0
        self.pushes: list[bytes] = []
        self.served: list[bytes] = []
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
    doc = json.loads(feed_document(site.peers(), site.server.name, "bad1"))
    peers = doc["wireguard"][site.server.name]["peers"]
    peers[1]["allowed_ips"] = peers[0]["allowed_ips"]
    peers.append({"public_key": format_key(site.clients[2].public)[:-2] + "!=",
                  "allowed_ips": [f"{site.clients[2].endpoint}/64"]})  # fmt: skip
    return json.dumps(doc)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def secret_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def fetch(url: str, method: str = "GET") -> bytes:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.headers).encode() + r.read()
    except urllib.error.HTTPError as e:
        return str(e.headers).encode() + e.read()


def wait_for(cond: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


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


def run_agent(lab: Lab, tmp_path: Path, argv_head: list[str], env: dict[str, str]) -> Run:
    site = build_site(lab)
    good = feed_document(site.peers(), site.server.name, "good1")
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    http_port = free_port()
    with Central(good, bad_document(site)) as central:
        config = tmp_path / "config.yaml"
        config.write_text(
            f"node: {{name: leak-01}}\n"
            f"wireguard:\n  resync_interval: 1s\n  interfaces:\n"
            f"    - {{name: {site.server.name}, backend: userspace, "
            f"uapi_socket: {site.server.socket_path}}}\n"
            f"feed: {{url: 'http://127.0.0.1:{central.port}/feed', long_poll: 2s, "
            f"token_file: {secret_file(tmp_path / 'feed.token', 'feed-token')}}}\n"
            f"load: {{interfaces: [lo], capacity: 1Gbit, sample_interval: 1s, window: 2s}}\n"
            f"http: {{listen: ['127.0.0.1:{http_port}']}}\n"
            f"push: {{url: 'http://127.0.0.1:{central.port}/push', interval: 1s, "
            f"secret_file: {secret_file(tmp_path / 'push.secret', 'push-secret')}}}\n"
            f"log: {{level: debug}}\n"
        )
        roots = [cwd, tmp, Path("/tmp"), Path("/var/tmp"), Path("/run"), Path("/dev/shm")]
        roots.append(Path.home())
        before = snapshot(roots)
        log_path = tmp_path / "agent.log"
        backend = UapiBackend(site.server.name, site.server.socket_path)
        with log_path.open("wb") as out:
            agent = subprocess.Popen(
                [*argv_head, "run", "-c", str(config)],
                stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": os.getcwd(), **env},
            )  # fmt: skip
        try:
            wait_for(lambda: plan(site.peers(), backend.read().peers).empty)
            for c in site.clients:
                assert c.ping().returncode == 0, "every client passes traffic"
            shown = site.server_ns.run(["wg", "show", site.server.name, "endpoints"]).stdout
            assert all(c.endpoint in shown for c in site.clients), "endpoints are known"
            time.sleep(3)  # resyncs, load samples and pushes with endpoints in the kernel
            base = f"http://127.0.0.1:{http_port}"
            served = [(f"GET {p}", fetch(base + p))
                      for p in ("/status", "/metrics", "/healthz", "/readyz", "/nope")]  # fmt: skip
            served.append(("POST /status", fetch(base + "/status", "POST")))
            assert central.feed_requests >= 4 and central.pushes
        finally:
            agent.send_signal(signal.SIGTERM)
            agent.wait(timeout=15)
        files = list(changed_files(before, snapshot(roots)))
        return Run(site, log_path.read_bytes(), served, central.pushes, files)


AGENT = [sys.executable, "-m", "nodeagent"]
PLANTED = [sys.executable, "-m", "tests.netns.leakcheck"]


def test_nothing_the_agent_emits_names_a_client(lab: Lab, tmp_path: Path) -> None:
    run = run_agent(lab, tmp_path, AGENT, {})
    text = run.log.decode(errors="replace")
    # The run really went through the paths that could leak.
    assert "DEBUG" in text, "the agent logged at debug level"
    assert "peer_sync applied" in text
    assert "feed_error kind=invalid" in text, "the bad document with real keys was rejected"
    assert "feed_error kind=http_status" in text and "push failed" in text
    assert b'"load"' in run.served[0][1] and b"nodeagent_" in run.served[1][1]
    hits = run.site.secrets().search(run.haystacks())
    assert hits == [], hits


@pytest.mark.parametrize("mode", ["print", "disk"])
def test_a_planted_leak_is_found(lab: Lab, tmp_path: Path, mode: str) -> None:
    """A stray debug print / debug file of the endpoints: the search must find it."""
    run = run_agent(lab, tmp_path, PLANTED, {"NODEAGENT_PLANT_LEAK": mode})
    hits = run.site.secrets().search(run.haystacks())
    assert any("endpoint" in h for h in hits), "the planted leak went unnoticed"
    print("\nplanted leak found:", *sorted(set(hits)), sep="\n  ")


def test_a_planted_log_line_is_masked_by_redaction(lab: Lab, tmp_path: Path) -> None:
    """The same leak through ``logging`` is caught by the second line of defence."""
    run = run_agent(lab, tmp_path, PLANTED, {"NODEAGENT_PLANT_LEAK": "log"})
    assert b"peer endpoint=[redacted]" in run.log
    assert run.site.secrets().search(run.haystacks()) == []
