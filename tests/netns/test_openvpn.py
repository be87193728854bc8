"""OpenVPN under the agent, for real: Debian's openvpn 2.6 server and clients in namespaces.

One OpenVPN server (module scope) in a namespace beside a wireguard-go
interface, started as docs/openvpn.md says (management on a unix socket with
a password file, ``management-client-auth``, ``username-as-common-name``,
``management-hold``), with certificates the test makes with ``openssl``. Each
client runs in its own namespace on its own veth link, logging in with
``--auth-user-pass``. The agent runs as ``python -m nodeagent run`` at debug
level from a file feed the tests rewrite. The tests run in file order and
share the server: logins, refusals, expiry, removal, OpenVPN restarted under
the agent, the agent restarted under a session, a burst, then the leak scan
over everything the agent logged, served and wrote.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodeagent.lab.netns import Namespace, veth_pair
from nodeagent.lab.openvpn import client_argv, password_hash, server_files
from nodeagent.lab.tunnel import Lab
from tests.leaks import AGENT, PLANTED, Secrets, changed_files, free_port, secret_file, snapshot
from tests.peerdata import write_atomic

SERVER_TUN = "tun-ovs"
SERVER_TUNNEL_IP = "10.99.0.1"
TIMEOUT = 90.0


def wait_for(cond: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached in time"
        time.sleep(0.2)


@dataclass
class Account:
    username: str
    password: str
    expires_at: str | None = None

    def feed(self) -> dict[str, str]:
        entry = {"username": self.username, "password_hash": make_hash_example(self.password)}
        if self.expires_at:
            entry["expires_at"] = self.expires_at
        return entry


_HASHES: dict[str, str] = {}


def make_hash_example(password: str) -> str:
    # The example's cost (N=16384, r=8): what a real login costs the agent.
    if password not in _HASHES:
        _HASHES[password] = password_hash(password)
    return _HASHES[password]


@dataclass
class VpnClient:
    ns: Namespace
    endpoint: str  # the client's own address on its link: what the server sees
    server_ip: str
    dir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> str:
        p = self.dir / "client.log"
        return p.read_text(errors="replace") if p.exists() else ""

    def start(self, username: str, password: str) -> None:
        self.stop()
        creds = secret_file(self.dir / "creds", f"{username}\n{password}\n")
        argv = client_argv(self.server_ip, self.dir.parent / "ca.crt", creds)
        out = (self.dir / "client.log").open("wb")
        self.proc = subprocess.Popen(self.ns.argv(argv), stdout=out, stderr=subprocess.STDOUT)

    def connected(self) -> bool:
        return "Initialization Sequence Completed" in self.log and self.ping(1)

    def refused(self) -> bool:
        return "AUTH_FAILED" in self.log

    def ping(self, count: int = 1, interval: float = 0.2) -> bool:
        argv = ["ping", "-n", "-q", "-c", str(count), "-i", str(interval), "-W", "2",
                SERVER_TUNNEL_IP]  # fmt: skip
        return self.ns.run(argv, check=False, timeout=120).returncode == 0

    def tunnel_ip(self) -> str | None:
        out = self.ns.run(["ip", "-4", "addr", "show", "dev", "tun0"], check=False).stdout
        m = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
        return m[1] if m else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@dataclass
class Site:
    lab: Lab
    dir: Path
    server_ns: Namespace
    feed: Path
    config: Path
    http_port: int
    accounts: dict[str, Account] = field(default_factory=dict)
    clients: list[VpnClient] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    agent: subprocess.Popen[bytes] | None = None
    served: list[tuple[str, bytes]] = field(default_factory=list)
    tunnel_ips: set[str] = field(default_factory=set)
    unlisted: list[Account] = field(default_factory=list)  # tried, never in the feed
    before: dict[Path, tuple[int, int]] = field(default_factory=dict)

    def scanned(self) -> list[Path]:
        """Where the agent could write: its own directories and the shared temporary ones."""
        return [self.dir / "cwd", self.dir / "home", self.dir / "tmp",
                Path("/run"), Path("/var/tmp"), Path("/dev/shm")]  # fmt: skip

    # -- the feed -------------------------------------------------------------------
    def publish(self, *names: str, version: str | None = None) -> None:
        users = [self.accounts[n].feed() for n in names]
        doc = {"version": version or f"v{time.monotonic_ns()}", "full": True,
               "wireguard": {self.wg: {"peers": []}}, "openvpn": {"users": users}}  # fmt: skip
        write_atomic(self.feed, json.dumps(doc))

    wg: str = ""

    # -- OpenVPN --------------------------------------------------------------------
    def start_server(self) -> None:
        out = (self.dir / "server.log").open("ab")
        argv = ["openvpn", "--config", str(self.dir / "server.conf")]
        self.server = subprocess.Popen(
            self.server_ns.argv(argv), stdout=out, stderr=subprocess.STDOUT
        )

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=30)
        self.server = None

    # -- the agent ------------------------------------------------------------------
    def start_agent(self, head: list[str] = AGENT, log: str = "agent.log", **env: str) -> None:
        out = (self.dir / log).open("ab")
        # Its own working, home and temporary directories: the leak scan reads them all.
        env = {**os.environ, "PYTHONPATH": os.getcwd(), "HOME": str(self.dir / "home"),
               "TMPDIR": str(self.dir / "tmp"), **env}  # fmt: skip
        self.agent = subprocess.Popen(
            [*head, "run", "-c", str(self.config)],
            stdout=out, stderr=subprocess.STDOUT, cwd=self.dir / "cwd", env=env,
        )  # fmt: skip
        wait_for(lambda: self.metric("nodeagent_openvpn_up") == 1, "the agent holds the socket")

    def stop_agent(self) -> None:
        if self.agent is not None and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=60)
        self.agent = None

    def get(self, path: str) -> bytes:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.http_port}{path}", timeout=10
            ) as r:
                body = bytes(r.read())
        except OSError:
            return b""
        self.served.append((f"GET {path}", body))
        return body

    def metric(self, name: str) -> float | None:
        text = self.get("/metrics").decode()
        m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M)
        return float(m[1]) if m else None

    # -- clients --------------------------------------------------------------------
    def client(self) -> VpnClient:
        i = len(self.clients)
        ns = self.lab.namespace("noc")
        link = veth_pair(self.server_ns, ns, address_a=f"203.0.113.{4 * i + 1}/30",
                         address_b=f"203.0.113.{4 * i + 2}/30", name_a=f"vc{i}")  # fmt: skip
        d = self.dir / f"client{i}"
        d.mkdir()
        c = VpnClient(ns, link.ip_b, link.ip_a, d)
        self.clients.append(c)
        return c

    def connect(self, c: VpnClient, name: str) -> None:
        a = self.accounts[name]
        c.start(a.username, a.password)
        wait_for(c.connected, f"client of {name} connected")
        ip = c.tunnel_ip()
        if ip:
            self.tunnel_ips.add(ip)


def account(site: Site, key: str, **kw: str) -> Account:
    # Distinctive names and passwords, so that the leak scan cannot hit by chance.
    a = Account(f"ovu{key}{abs(hash(key)) % 10**6:06d}", f"pw-{key}-{time.time_ns() % 10**9}", **kw)
    site.accounts[key] = a
    return a


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    d = tmp_path_factory.mktemp("ovpn")
    for sub in ("cwd", "home", "tmp"):
        (d / sub).mkdir()
    server_files(d, SERVER_TUN, "10.99.0.0", "mgmt-pass-7f3a")
    with Lab() as lab:
        server_ns = lab.namespace("nos")
        wg = lab.wireguard_go(server_ns, "wgo")
        http_port = free_port()
        site = Site(lab, d, server_ns, d / "feed.json", d / "config.yaml", http_port)
        site.wg = wg.name
        site.config.write_text(
            "node: {name: ovpn-01}\n"
            f"wireguard:\n  interfaces:\n    - {{name: {wg.name}, backend: userspace}}\n"
            f"feed: {{path: {site.feed}}}\n"
            "openvpn:\n  instances:\n"
            f"    - {{management: {d}/mgmt.sock, password_file: {d}/mgmt.pw, "
            f"interface: {SERVER_TUN}}}\n"
            f"http: {{listen: ['127.0.0.1:{http_port}']}}\n"
            "log: {level: debug}\n"
        )
        for key in ("alice", "bob", "carol", "dave", "old", *(f"b{i}" for i in range(8))):
            account(site, key)
        site.accounts["old"].expires_at = "2020-01-01T00:00:00Z"
        site.publish(*site.accounts)
        site.start_server()
        site.before = snapshot(site.scanned())
        try:
            site.start_agent()
            yield site
        finally:
            for c in site.clients:
                c.stop()
            site.stop_agent()
            site.stop_server()


def test_good_password_gets_in_and_passes_traffic(site: Site) -> None:
    c = site.client()
    site.connect(c, "alice")
    assert c.ping(5)
    assert (site.metric("nodeagent_openvpn_logins_accepted_total") or 0) >= 1


def test_wrong_password_unknown_user_and_expired_account_are_refused(site: Site) -> None:
    wrong, ghost, old = site.client(), site.client(), site.client()
    wrong.start(site.accounts["bob"].username, "not-the-password")
    ghost.start("ovughost000001", "whatever-pass")
    old.start(site.accounts["old"].username, site.accounts["old"].password)
    for c in (wrong, ghost, old):
        wait_for(c.refused, "refused")
        assert not c.ping(1)
        c.stop()
    assert (site.metric("nodeagent_openvpn_logins_refused_total") or 0) >= 3
    site.unlisted.append(Account("ovughost000001", "whatever-pass"))


def test_account_expiring_while_connected_loses_its_tunnel(site: Site) -> None:
    c = site.client()
    site.connect(c, "carol")
    soon = datetime.now(UTC) + timedelta(seconds=3)
    site.accounts["carol"].expires_at = soon.strftime("%Y-%m-%dT%H:%M:%SZ")
    site.publish(*site.accounts)
    wait_for(lambda: not c.ping(1), "carol's tunnel is gone")
    assert (site.metric("nodeagent_openvpn_sessions_ended_total") or 0) >= 1
    c.stop()


def test_user_removed_from_the_feed_loses_the_tunnel(site: Site) -> None:
    c = site.client()
    site.connect(c, "dave")
    site.publish(*(n for n in site.accounts if n != "dave"))
    wait_for(lambda: not c.ping(1), "dave's tunnel is gone")
    c.stop()


def test_openvpn_restarted_under_the_agent_clients_get_back_in(site: Site) -> None:
    alice = site.clients[0]
    assert alice.ping(1)
    site.stop_server()
    wait_for(lambda: site.metric("nodeagent_openvpn_up") == 0, "the agent saw it go")
    site.start_server()
    # management-hold: OpenVPN serves no one until the agent is back and releases it.
    wait_for(lambda: site.metric("nodeagent_openvpn_up") == 1, "the agent reconnected")
    wait_for(lambda: alice.ping(1), "alice is back in")


def test_agent_restarted_under_a_live_session(site: Site) -> None:
    alice = site.clients[0]
    wait_for(lambda: alice.ping(1), "alice is in")
    argv = ["ping", "-n", "-q", "-c", "40", "-i", "0.25", "-W", "5", SERVER_TUNNEL_IP]
    pinger = subprocess.Popen(alice.ns.argv(argv), stdout=subprocess.PIPE, text=True)
    time.sleep(1)
    site.stop_agent()
    time.sleep(1)
    site.start_agent()
    out, _ = pinger.communicate(timeout=120)
    assert " 0% packet loss" in out, out
    # The new agent never saw alice's session start, and can still end it.
    site.publish(*(n for n in site.accounts if n not in ("dave", "alice")))
    wait_for(lambda: not alice.ping(1), "alice's tunnel is gone")
    alice.stop()


def test_a_burst_of_logins_all_get_in(site: Site) -> None:
    burst = [(site.client(), f"b{i}") for i in range(8)]
    for c, name in burst:
        a = site.accounts[name]
        c.start(a.username, a.password)
    for c, name in burst:
        wait_for(c.connected, f"{name} connected", timeout=180)
        ip = c.tunnel_ip()
        if ip:
            site.tunnel_ips.add(ip)
    for c, _ in burst:
        c.stop()


def secrets(site: Site) -> Secrets:
    s = Secrets()
    for key, a in [*site.accounts.items(), *(("unlisted", a) for a in site.unlisted)]:
        s.needles[f"{key} username"] = a.username.encode()
        s.needles[f"{key} password"] = a.password.encode()
    s.needles["management password"] = b"mgmt-pass-7f3a"
    for i, c in enumerate(site.clients):
        s.address(f"client{i} endpoint", c.endpoint)
    for ip in site.tunnel_ips:
        s.address(f"tunnel {ip}", ip)
    return s


def test_the_agent_names_no_user_password_or_address(site: Site) -> None:
    for path in ("/status", "/metrics", "/readyz", "/healthz"):
        site.get(path)
    site.stop_agent()
    log = (site.dir / "agent.log").read_bytes()
    assert b"openvpn_connected" in log and b"DEBUG" in log and b"openvpn_auth" in log
    assert site.tunnel_ips, "the clients' tunnel addresses were seen"
    s = secrets(site)
    # /tmp is left out: OpenVPN's and the clients' own logs are there (the agent's is in TMPDIR).
    files = list(changed_files(site.before, snapshot(site.scanned())))
    hits = s.search([("the agent's log", log), *site.served, *files])
    assert hits == [], hits


def test_the_scan_finds_a_planted_username(site: Site) -> None:
    """The same search over an agent that logs each login's username finds it: the scan can fail."""
    site.start_agent(PLANTED, "planted.log", NODEAGENT_PLANT_LEAK="openvpn")
    c = site.clients[-1]
    site.connect(c, "b7")
    c.stop()
    site.stop_agent()
    hits = secrets(site).search([("planted", (site.dir / "planted.log").read_bytes())])
    assert hits == ["b7 username in planted"], hits
