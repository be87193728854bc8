"""`nodeagent lab` / `make demo`: the whole system on this machine, in network namespaces.

A "server" namespace runs wireguard-go, the reference feed server and the
agent (HTTP on the namespace's loopback); a "client" namespace is a customer
with a real tunnel. The demo adds the customer through the feed, sends iperf3
traffic through the tunnel, shows `nodeagent status` while it flows, removes the
customer through the feed, and tears everything down. Needs root, wireguard-go,
wireguard-tools and iperf3. Traffic stays inside the namespaces it creates.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from nodeagent.core.model import format_key
from nodeagent.lab.netns import missing_prerequisites
from nodeagent.lab.tunnel import Lab, TunnelPair, tunnel_pair

PORT_FEED, PORT_HTTP = 8700, 9586
SYNTHETIC_PEERS = 500


def _accounts(pair: TunnelPair, with_client: bool) -> str:
    peers = [
        {
            "public_key": format_key(i.to_bytes(32, "big")),
            "allowed_ips": [f"10.98.{i >> 8}.{i & 255}/32"],
        }
        for i in range(1, SYNTHETIC_PEERS + 1)
    ]
    if with_client:
        peers.append(
            {"public_key": format_key(pair.client_public), "allowed_ips": ["10.99.0.2/32"]}
        )
    return json.dumps({"full": True, "wireguard": {pair.server.name: {"peers": peers}}})


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _wait(what: str, cond: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"demo: {what} did not happen within {timeout:.0f}s")
        time.sleep(0.2)


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def run_demo(seconds: float = 12.0) -> int:
    """Run the demo; returns an exit code."""
    missing = missing_prerequisites() + [
        tool for tool in ("iperf3",) if not any(
            os.access(os.path.join(d, tool), os.X_OK) for d in os.environ["PATH"].split(":")
        )
    ]  # fmt: skip
    if missing:
        print("demo: missing " + ", ".join(missing), file=sys.stderr)
        return 1
    procs: list[subprocess.Popen[str]] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="nodeagent-demo-") as tmp_dir:
        tmp = Path(tmp_dir)
        try:
            return _demo(lab, tmp, procs, seconds)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    p.kill()


def _demo(lab: Lab, tmp: Path, procs: list[subprocess.Popen[str]], seconds: float) -> int:
    _say("building the lab: server and client namespaces, wireguard-go in both")
    pair = tunnel_pair(lab)
    server = pair.server_ns
    accounts, token = tmp / "accounts.json", tmp / "feed.token"
    _write(accounts, _accounts(pair, with_client=False))
    _write(token, "demo-token\n", 0o600)
    config = tmp / "config.yaml"
    config.write_text(
        "node: {name: demo-01}\n"
        "wireguard:\n  interfaces:\n"
        f"    - {{name: {pair.server.name}, backend: userspace}}\n"
        f"feed: {{url: 'http://127.0.0.1:{PORT_FEED}/feed', token_file: {token}, "
        "long_poll: 10s}\n"
        f"load: {{interfaces: [{pair.veth.name_a}], capacity: 100Mbit, "
        "sample_interval: 1s, window: 4s}\n"
        f'http: {{listen: ["127.0.0.1:{PORT_HTTP}"]}}\n'
    )
    py = sys.executable
    _say("starting the reference feed server and the agent in the server namespace")
    procs.append(
        server.popen(
            [py, "-m", "nodeagent.central.feedserver", "--accounts", str(accounts),
             "--port", str(PORT_FEED), "--token-file", str(token)],
            capture=False,
        )
    )  # fmt: skip
    procs.append(server.popen([py, "-m", "nodeagent", "run", "-c", str(config)], capture=False))
    status = [py, "-m", "nodeagent", "status", "--url", f"http://127.0.0.1:{PORT_HTTP}/status"]
    _wait("the agent's first sync", lambda: server.run(status, check=False).returncode == 0)
    print(server.run(status).stdout)

    _say("a customer signs up: the feed adds the client's key")
    _write(accounts, _accounts(pair, with_client=True))
    _wait("the tunnel", lambda: pair.ping(count=1, interval=0.2, wait=1).returncode == 0)
    print("client -> server through the tunnel: ping ok")

    _say(f"{seconds:.0f}s of iperf3 at 40 Mbit/s through the tunnel; the agent's view:")
    procs.append(server.popen(["iperf3", "-s", "-1", "-B", pair.server_tunnel_ip], capture=False))
    time.sleep(0.5)
    client = pair.client_ns.popen(
        ["iperf3", "-c", pair.server_tunnel_ip, "-u", "-b", "40M", "-t", str(int(seconds))],
        capture=False,
    )
    procs.append(client)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(3)
        print(server.run(status).stdout)
    client.wait(timeout=30)

    _say("the account ends: the feed removes the key, the tunnel stops")
    _write(accounts, _accounts(pair, with_client=False))
    _wait("the removal", lambda: pair.ping(count=1, interval=0.2, wait=1).returncode != 0)
    print("client -> server: no answer, as it should be")
    metrics = server.run(["curl", "-s", f"http://127.0.0.1:{PORT_HTTP}/metrics"], check=False)
    if metrics.returncode == 0:
        _say("a few of /metrics")
        for line in metrics.stdout.splitlines():
            if line.startswith(("nodeagent_load_percent", "nodeagent_configured_peers")):
                print(line)
    _say("done: tearing the lab down")
    return 0


def main() -> int:
    return run_demo()


if __name__ == "__main__":
    raise SystemExit(main())
