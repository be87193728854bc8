"""The demo's system, built inside a :class:`~nodeagent.lab.tunnel.Lab`.

::

    host namespace: bridge HUB (10.213.X.1) -- collector (127.0.0.1:PORT and HUB:PORT), feed server
       | veth "uplink0" per server (its pushes and its feed)
    server namespaces: nl-ams-01, de-fra-01 (wireguard-go), se-sto-01 (openvpn), each with its agent
       | veth "custN" per customer (the server's measured uplink)
    customer namespaces: a wireguard-go client or an openvpn client, and iperf3

Each server's agent runs ``python -m nodeagent run -c`` in its namespace
with its own files in a directory of its own; the collector and the feed
server are ``python -m`` commands in the host namespace, bound to 127.0.0.1
and the bridge's address only.
"""

from __future__ import annotations

import random
import secrets
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from nodeagent.lab.configs import (
    Account,
    NodeFiles,
    Place,
    agent_config,
    collector_config,
    feed_accounts,
)
from nodeagent.lab.netns import LabError, Namespace, run, veth_pair
from nodeagent.lab.openvpn import client_argv, password_hash, server_files, write_secret
from nodeagent.lab.tunnel import Lab, wg_client, wg_server

PY = sys.executable
WG_PORT, OPENVPN_TUN = 51820, "tun-ovpn"


@dataclass(frozen=True)
class ServerSpec:
    name: str
    kind: str  # "WireGuard" | "OpenVPN"
    place: Place
    rates: tuple[str, ...]  # one customer each (iperf3 -b); the last WireGuard one joins later
    # The uplink's capacity: a few Mbit/s fill 10 Mbit/s (the page's fair-use note shows)
    # and hardly show on 100 Mbit/s, without the demo itself loading the machine.
    capacity: str = "10Mbit"


SERVERS = (
    ServerSpec("nl-ams-01", "WireGuard", Place("Amsterdam", "Netherlands", "nl"), ("6M",)),
    ServerSpec(
        "de-fra-01", "WireGuard", Place("Frankfurt", "Germany", "de"), ("2M", "3M"), "20Mbit"
    ),
    ServerSpec("se-sto-01", "OpenVPN", Place("Stockholm", "Sweden", "se"), ("4M",), "100Mbit"),
)


@dataclass
class Customer:
    """One customer: a namespace behind a server, its tunnel, its feed entry, its iperf3."""

    spec: ServerSpec
    index: int  # among its server's customers
    ns: Namespace
    rate: str
    link_ip: str  # the server's address on the customer's link
    server_tunnel_ip: str
    account: Account
    credentials: Path | None = None  # OpenVPN: username and password, for the client
    iperf: subprocess.Popen[bytes] | None = None

    @property
    def iperf_port(self) -> int:
        return 5201 + self.index

    def tunnel_up(self) -> bool:
        argv = ["ping", "-n", "-q", "-c", "1", "-W", "1", self.server_tunnel_ip]
        return self.ns.run(argv, check=False, timeout=10).returncode == 0


@dataclass
class Server:
    spec: ServerSpec
    ns: Namespace
    files: NodeFiles
    customers: list[Customer] = field(default_factory=list)


@dataclass
class System:
    lab: Lab
    dir: Path
    hub_ip: str
    page_port: int
    feed_port: int
    servers: list[Server] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.page_port}/"

    @property
    def customers(self) -> list[Customer]:
        return [c for s in self.servers for c in s.customers]

    def publish(self) -> None:
        """Write the feed server's accounts file (it notices within a second)."""
        wg = {s.spec.name: s.files.wg_interface for s in self.servers if s.files.wg_interface}
        text = feed_accounts(wg, [c.account for c in self.customers])
        tmp = self.dir / "accounts.json.tmp"
        tmp.write_text(text)
        tmp.replace(self.dir / "accounts.json")

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"


def free_port(preferred: int = 0) -> int:
    """``preferred`` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0) if preferred else (0,):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise LabError("no free port on 127.0.0.1")


def _hub_subnet() -> str:
    """A 10.213.X.0/24 that nothing on this host routes yet."""
    taken = run(["ip", "-4", "route", "show", "table", "all"]).stdout
    taken += run(["ip", "-4", "addr"]).stdout
    for x in random.sample(range(1, 255), 254):
        if f"10.213.{x}." not in taken:
            return f"10.213.{x}"
    raise LabError("no free 10.213.X.0/24 for the demo's bridge")


def build_network(lab: Lab, tmp: Path, page_port: int) -> System:
    """Namespaces, links and tunnels (no agent yet); WireGuard servers' peers come from the feed."""
    net = _hub_subnet()
    system = System(lab, tmp, f"{net}.1", free_port(page_port), free_port())
    (tmp / "logs").mkdir()
    hub = lab.root_link("ndb")
    run(["ip", "link", "add", hub, "type", "bridge"])
    run(["ip", "addr", "add", f"{system.hub_ip}/24", "dev", hub])
    run(["ip", "link", "set", hub, "up"])
    for k, spec in enumerate(SERVERS, start=1):
        ns = lab.namespace("nds")
        root_end = lab.root_link("ndv")
        run(["ip", "link", "add", root_end, "type", "veth", "peer", "name", "uplink0",
             "netns", ns.name])  # fmt: skip
        run(["ip", "link", "set", root_end, "master", hub, "up"])
        ns.ip("addr", "add", f"{net}.{10 + k}/24", "dev", "uplink0")
        ns.ip("link", "set", "uplink0", "up")
        d = tmp / spec.name
        d.mkdir()
        server = Server(spec, ns, NodeFiles(spec.name, d, capacity=spec.capacity))
        system.servers.append(server)
        _customers(lab, server, k)
    return system


def _customers(lab: Lab, server: Server, k: int) -> None:
    spec, ns = server.spec, server.ns
    wg = None
    if spec.kind == "WireGuard":
        wg = wg_server(lab, ns, f"10.100.{k}.1/24", WG_PORT, prefix="ndw")
        server.files.wg_interface = wg.wg.name
    else:
        server.files.openvpn_tun = OPENVPN_TUN
    for j, rate in enumerate(spec.rates):
        cns = lab.namespace("ndc")
        link = veth_pair(ns, cns, address_a=f"172.16.{k}.{4 * j + 1}/30",
                         address_b=f"172.16.{k}.{4 * j + 2}/30", name_a=f"cust{j}")  # fmt: skip
        server.files.load_interfaces.append(f"cust{j}")
        account, creds = Account(server=spec.name), None
        if wg is not None:
            client = wg_client(lab, cns, server_public=wg.public, endpoint=f"{link.ip_a}:{WG_PORT}",
                               address=f"10.100.{k}.{10 + j}", subnet=f"10.100.{k}.0/24",
                               prefix="ndw")  # fmt: skip
            account.public_key, account.tunnel_ip = client.public, f"10.100.{k}.{10 + j}"
            # The last customer of a server with several signs up while the demo runs.
            account.listed = j == 0 or j < len(spec.rates) - 1
        else:
            account.username = f"demo-{secrets.token_hex(4)}"
            password = secrets.token_urlsafe(12)
            account.password_hash = password_hash(password)
            creds = server.files.dir / f"customer{j}.pass"
            write_secret(creds, f"{account.username}\n{password}\n")
        server.customers.append(
            Customer(spec, j, cns, rate, link.ip_a, f"10.100.{k}.1", account, creds)
        )


def start_processes(system: System) -> None:
    """The feed server, the collector, each server's VPN daemon and agent, the OpenVPN clients."""
    lab, tmp = system.lab, system.dir
    token = write_secret(tmp / "feed.token", secrets.token_urlsafe(24) + "\n")
    system.publish()
    for s in system.servers:
        write_secret(s.files.secret, secrets.token_urlsafe(32) + "\n")
        if s.files.openvpn_tun:
            conf = server_files(s.files.dir, OPENVPN_TUN, f"10.100.{SERVERS.index(s.spec) + 1}.0",
                                secrets.token_urlsafe(16))  # fmt: skip
            lab.process(["openvpn", "--config", str(conf)], ns=s.ns, log=system.log(s.spec.name))
        s.files.config.write_text(
            agent_config(
                s.files,
                hub=system.hub_ip,
                feed_port=system.feed_port,
                page_port=system.page_port,
                token=token,
            )
        )
    collector = tmp / "collector.yaml"
    collector.write_text(
        collector_config(
            [(s.files, s.spec.place) for s in system.servers],
            listen=[f"127.0.0.1:{system.page_port}", f"{system.hub_ip}:{system.page_port}"],
            database=tmp / "history.sqlite",
        )
    )
    lab.process([PY, "-m", "nodeagent", "collector", "-c", str(collector)],
                log=system.log("collector"))  # fmt: skip
    lab.process([PY, "-m", "nodeagent.central.feedserver", "--accounts", str(tmp / "accounts.json"),
                 "--host", system.hub_ip, "--port", str(system.feed_port),
                 "--token-file", str(token)], log=system.log("feedserver"))  # fmt: skip
    for s in system.servers:
        lab.process([PY, "-m", "nodeagent", "run", "-c", str(s.files.config)], ns=s.ns,
                    log=system.log(f"agent-{s.spec.name}"))  # fmt: skip
        for c in s.customers:
            log = system.log(f"iperf3-s-{s.spec.name}-{c.iperf_port}")
            lab.process(["iperf3", "-s", "-p", str(c.iperf_port), "--logfile", str(log)], ns=s.ns)
            if c.credentials is not None:
                # nointeract: the client tries again until the agent has the feed.
                argv = client_argv(c.link_ip, s.files.dir / "ca.crt", c.credentials, verb=1,
                                   auth_retry="nointeract")  # fmt: skip
                lab.process(argv, ns=c.ns, log=system.log(f"openvpn-client-{s.spec.name}"))


def start_iperf(system: System, c: Customer, seconds: float | None) -> None:
    """iperf3 UDP at the customer's rate through its tunnel, for ``seconds`` (None: a day)."""
    t = str(max(int(seconds), 1) if seconds else 86400)
    name = f"iperf3-c-{c.spec.name}-{c.iperf_port}"
    c.iperf = system.lab.process(
        ["iperf3", "-c", c.server_tunnel_ip, "-p", str(c.iperf_port), "-u", "-b", c.rate,
         "-l", "1200", "-t", t, "--logfile", str(system.log(name))], ns=c.ns)  # fmt: skip
