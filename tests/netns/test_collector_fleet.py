"""Three servers, one collector, one Prometheus: the whole path from counters to the public APIs.

Each server is a namespace with a wireguard-go interface and the real agent
(`nodeagent run`): it measures its veth uplink, serves /metrics on it and
pushes its signed status every second to the collector in a "central"
namespace. A real Prometheus server (Debian's) there scrapes all three
agents' /metrics, and a second collector reads its figures from that
Prometheus (`source: prometheus`). iperf3 sends a different steady UDP rate
from each server, so each has its own load; both collectors must show the
same figures for every server, those figures must be the servers' own, and
a server whose agent stops must go offline on both.

Nothing here asserts a time: each wait is for a condition, with a generous
deadline for a loaded machine.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.lab.netns import Namespace, veth_pair
from nodeagent.lab.tunnel import Lab

REPO = Path(__file__).resolve().parents[2]
CAPACITY = "100Mbit"
# UDP payload rates (iperf3 -b); the agents publish in steps of 10 % of 100 Mbit/s.
# Framed, each is within 3.5 Mbit/s of its 10 Mbit/s step (10, 30, 50): steady figures.
RATES = {"srv-a": "10M", "srv-b": "30M", "srv-c": "50M"}
CENTRAL_IP = "10.77.0.1"


@pytest.fixture(scope="module", autouse=True)
def _tools() -> None:
    """iperf3 and prometheus are this test's prerequisites: install them, or fail."""
    result = subprocess.run(
        [str(REPO / "scripts" / "ensure-apt"), "iperf3", "prometheus"],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0 or not shutil.which("prometheus"):
        pytest.fail(f"cannot install iperf3/prometheus: {result.stderr.strip()}", pytrace=False)


@dataclass
class Server:
    name: str
    ns: Namespace
    ip: str
    agent: subprocess.Popen[str]


def wait_for(what: str, cond: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"{what}: not reached"
        time.sleep(0.5)


def get_json(ns: Namespace, url: str) -> dict[str, object] | None:
    proc = ns.run(["curl", "-sf", "--max-time", "10", url], check=False, timeout=30)
    if proc.returncode != 0:
        return None
    doc: dict[str, object] = json.loads(proc.stdout)
    return doc


def secret(tmp: Path, name: str) -> Path:
    path = tmp / f"{name}.secret"
    path.write_text(f"push-secret-of-{name}\n")
    path.chmod(0o600)
    return path


def agent_config(tmp: Path, name: str, wg: str, uplink: str, ip: str) -> Path:
    feed = tmp / f"{name}.feed.json"
    feed.write_text(json.dumps({"full": True, "wireguard": {wg: {"peers": []}}}))
    config = tmp / f"{name}.yaml"
    config.write_text(
        f"node: {{name: {name}}}\n"
        f"wireguard:\n  interfaces:\n    - {{name: {wg}, backend: userspace}}\n"
        f"feed: {{path: {feed}}}\n"
        f"load: {{interfaces: [{uplink}], capacity: {CAPACITY}, sample_interval: 1s, "
        "window: 3s, resolution_percent: 10}\n"
        f'http: {{listen: ["{ip}:9586"]}}\n'
        f"push: {{url: 'http://{CENTRAL_IP}:8600/api/v1/push', "
        f"secret_file: {secret(tmp, name)}, interval: 1s}}\n"
    )
    return config


def collector_config(tmp: Path, source: str, port: int) -> Path:
    lines = [
        "collector:",
        f"  listen: ['0.0.0.0:{port}']",
        f"  database: {tmp}/{source}.sqlite",
        "  stale_after: 5s",
        f"  source: {source}",
    ]
    if source == "prometheus":
        lines.append("  prometheus: {url: 'http://127.0.0.1:9090', interval: 1s}")
    lines += ["log: {level: debug}", "nodes:"]
    for name in RATES:
        entry = (
            f"  - {{name: {name}, host: {name}.example.net, city: C, country: C, country_code: cc"
        )
        if source == "push":
            entry += f", secret_file: {tmp}/{name}.secret"
        lines.append(entry + "}")
    path = tmp / f"collector-{source}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def prometheus_config(tmp: Path, servers: list[Server]) -> Path:
    path = tmp / "prometheus.yml"
    targets = "\n".join(
        f"      - targets: ['{s.ip}:9586']\n        labels: {{node: {s.name}}}" for s in servers
    )
    path.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        f"scrape_configs:\n  - job_name: nodeagent\n    static_configs:\n{targets}\n"
    )
    return path


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for p in reversed(started):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(started):
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def figures(doc: dict[str, object] | None) -> dict[str, tuple[object, ...]]:
    """Per online server: (rx, tx, capacity), as /api/v1/servers shows it.

    The load percentage is left out here: it is the busier of link and CPU, and
    the machine's CPU moves between two samples.
    """
    if doc is None:
        return {}
    servers = doc["servers"]
    assert isinstance(servers, list)
    return {
        s["name"]: (s["rx_bps"], s["tx_bps"], s["capacity_bps"]) for s in servers if s["online"]
    }


def test_agents_push_and_prometheus_agrees(
    lab: Lab, tmp_path: Path, procs: list[subprocess.Popen[str]]
) -> None:
    py = sys.executable
    central = lab.namespace("nac")
    central.ip("addr", "add", f"{CENTRAL_IP}/32", "dev", "lo")
    servers: list[Server] = []
    for k, name in enumerate(RATES, start=1):
        ns = lab.namespace("nas")
        ip = f"10.77.{k}.2"
        veth_pair(ns, central, address_a=f"{ip}/24", address_b=f"10.77.{k}.1/24",
                  name_a="uplink0", name_b=f"to{name[-1]}")  # fmt: skip
        ns.ip("route", "add", f"{CENTRAL_IP}/32", "via", f"10.77.{k}.1")
        wg = lab.wireguard_go(ns, "wgf")
        config = agent_config(tmp_path, name, wg.name, "uplink0", ip)
        log = (tmp_path / f"{name}.log").open("w")
        agent = subprocess.Popen(
            ns.argv([py, "-m", "nodeagent", "run", "-c", str(config)]),
            stdout=log, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        procs.append(agent)
        servers.append(Server(name, ns, ip, agent))

    def start(argv: list[str], log: str) -> subprocess.Popen[str]:
        out = (tmp_path / log).open("w")
        p = subprocess.Popen(central.argv(argv), stdout=out, stderr=subprocess.STDOUT, text=True)
        procs.append(p)
        return p

    push_collector = start(
        [py, "-m", "nodeagent", "collector", "-c", str(collector_config(tmp_path, "push", 8600))],
        "collector-push.log",
    )
    start(
        ["prometheus", f"--config.file={prometheus_config(tmp_path, servers)}",
         f"--storage.tsdb.path={tmp_path}/tsdb", "--web.listen-address=127.0.0.1:9090"],
        "prometheus.log",
    )  # fmt: skip
    prom_collector = start(
        [py, "-m", "nodeagent", "collector", "-c",
         str(collector_config(tmp_path, "prometheus", 8601))],
        "collector-prometheus.log",
    )  # fmt: skip
    for k in range(1, len(servers) + 1):
        # The iperf3 server listens in the central namespace; each agent's uplink carries it.
        start(["iperf3", "-s", "-p", str(5200 + k), "-B", CENTRAL_IP], f"iperf-s{k}.log")
    time.sleep(1)
    clients = [
        s.ns.popen(["iperf3", "-c", CENTRAL_IP, "-p", str(5200 + k), "-u", "-b", RATES[s.name],
                    "-l", "1200", "-t", "600"], capture=False)
        for k, s in enumerate(servers, start=1)
    ]  # fmt: skip
    procs.extend(clients)

    push_url = "http://127.0.0.1:8600/api/v1/servers"
    prom_url = "http://127.0.0.1:8601/api/v1/servers"

    def agents_figures() -> dict[str, tuple[object, ...]]:
        out = {}
        for s in servers:
            doc = get_json(s.ns, f"http://{s.ip}:9586/status")
            if doc is not None:
                load = doc["load"]
                assert isinstance(load, dict)
                out[s.name] = (load["rx_bps"], load["tx_bps"], load["capacity_bps"])
        return out

    agreed: dict[str, tuple[object, ...]] = {}

    def both_agree() -> bool:
        push, prom = figures(get_json(central, push_url)), figures(get_json(central, prom_url))
        if set(push) != set(RATES) or push != prom:
            return False
        # Each server's own figure, at the same moment, is what both show.
        if agents_figures() != push:
            return False
        agreed.update(push)
        return True

    wait_for("both collectors showing every server with the same figures", both_agree, 240)
    print(f"both collectors and the agents: (rx, tx, capacity) {agreed}")
    tx = {name: agreed[name][1] for name in RATES}
    assert tx == {"srv-a": 10_000_000, "srv-b": 30_000_000, "srv-c": 50_000_000}, agreed
    assert all(agreed[name][2] == 100_000_000 for name in RATES)
    # The load shown is at least the link's share (the CPU may make it more).
    doc = get_json(central, push_url)
    assert doc is not None
    for s in doc["servers"]:  # type: ignore[attr-defined]
        assert s["load_percent"] >= tx[s["name"]] / 1_000_000, s

    # The page and the public traffic API show the same servers.
    page = central.run(["curl", "-sf", "http://127.0.0.1:8600/"]).stdout
    assert page.count('<tr data-name="srv-') == 3
    traffic = get_json(central, "http://127.0.0.1:8601/api/traffic.json")
    assert traffic is not None
    assert traffic["srv-c.example.net"]["bandwidth_out"] == 50_000  # type: ignore[index]

    # An agent that stops goes offline on both collectors.
    servers[0].agent.send_signal(signal.SIGTERM)
    assert servers[0].agent.wait(timeout=30) == 0

    def offline_on_both() -> bool:
        push, prom = figures(get_json(central, push_url)), figures(get_json(central, prom_url))
        return "srv-a" not in push and "srv-a" not in prom and len(push) == len(prom) == 2

    wait_for("the stopped server offline on both", offline_on_both, 120)
    traffic = get_json(central, "http://127.0.0.1:8600/api/traffic.json")
    assert traffic is not None and traffic["srv-a.example.net"]["bandwidth_in"] == -1  # type: ignore[index]

    for p in (push_collector, prom_collector):
        p.send_signal(signal.SIGTERM)
        assert p.wait(timeout=30) == 0
    for log in ("collector-push.log", "collector-prometheus.log"):
        text = (tmp_path / log).read_text()
        assert "collector stopped" in text, text
        for address in ("10.77.", "127.0.0.1"):
            assert address not in text, (log, text)
