"""The real daemon against real wireguard-go: no packet lost across restarts and resyncs."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from nodeagent.core.model import Peer, format_key
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.peerdata import feed_document, make_peers, write_atomic


def write_feed(path: Path, peers: dict[bytes, Peer], interface: str, version: str) -> None:
    write_atomic(path, feed_document(peers, interface, version))


def desired_peers(pair: TunnelPair) -> dict[bytes, Peer]:
    peers = make_peers(200, v4_base=10)
    client = Peer(pair.client_public, frozenset({AllowedIP.parse(f"{pair.client_tunnel_ip}/32")}))
    peers[client.public_key] = client
    return peers


def write_config(tmp: Path, pair: TunnelPair) -> Path:
    config = tmp / "config.yaml"
    config.write_text(
        f"node: {{name: netns-01}}\n"
        f"wireguard:\n  resync_interval: 1s\n  interfaces:\n"
        f"    - name: {pair.server.name}\n      backend: userspace\n"
        f"      uapi_socket: {pair.server.socket_path}\n"
        f"feed: {{path: {tmp / 'feed.json'}}}\n"
        f"log: {{level: debug}}\n"
    )
    return config


def start_agent(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "run", "-c", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def wait_for(cond: object, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.05)


def test_no_packet_lost_across_restart_reload_and_resync(
    tunnel_pair: TunnelPair, tmp_path: Path
) -> None:
    pair = tunnel_pair
    desired = desired_peers(pair)
    write_feed(tmp_path / "feed.json", desired, pair.server.name, "v1")
    config = write_config(tmp_path, pair)
    log = tmp_path / "agent.log"
    backend = UapiBackend(pair.server.name, pair.server.socket_path)

    agent = start_agent(config, log)
    try:
        wait_for(lambda: plan(desired, backend.read().peers).empty)
        assert pair.ping(count=3, interval=0.2).returncode == 0

        ping = pair.ping_popen(count=800, interval=0.01)
        time.sleep(1.0)
        agent.send_signal(signal.SIGHUP)  # reload: config and feed read again
        time.sleep(1.0)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
        agent = start_agent(config, log)  # a new agent resyncs onto a populated interface
        time.sleep(2.0)
        write_feed(tmp_path / "feed.json", desired, pair.server.name, "v2")  # same peers
        out, _ = ping.communicate(timeout=60)
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=15)

    assert "800 packets transmitted, 800 received" in out, out
    assert plan(desired, backend.read().peers).empty
    text = log.read_text()
    assert "config_reload done" in text
    assert text.count("peer_sync applied") == 1, "the restarted agent must not re-send anything"
    for p in desired.values():
        assert format_key(p.public_key) not in text and p.public_key.hex() not in text
    assert pair.client_tunnel_ip not in text


def test_sync_once_twice(tunnel_pair: TunnelPair, tmp_path: Path) -> None:
    pair = tunnel_pair
    desired = desired_peers(pair)
    write_feed(tmp_path / "feed.json", desired, pair.server.name, "v1")
    config = write_config(tmp_path, pair)
    cmd = [sys.executable, "-m", "nodeagent", "sync", "--once", "-c", str(config)]
    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert first.stdout == f"{pair.server.name}: added=201 updated=0 removed=0 unchanged=0\n"
    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert second.stdout == f"{pair.server.name}: added=0 updated=0 removed=0 unchanged=201\n"
    assert pair.ping(count=3, interval=0.2).returncode == 0


def test_daemon_follows_http_feed(tunnel_pair: TunnelPair, tmp_path: Path) -> None:
    """`nodeagent run` long-polls the reference feed server; a change reaches the kernel."""
    pair = tunnel_pair
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "feed.token"
    token.write_text("s3cret-token\n")
    token.chmod(0o600)
    accounts = tmp_path / "accounts.json"
    desired = desired_peers(pair)
    write_atomic(accounts, feed_document(desired, pair.server.name))
    server = subprocess.Popen(
        [sys.executable, "-m", "nodeagent.central.feedserver", "--accounts", str(accounts),
         "--port", str(port), "--token-file", str(token)],
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: {{name: netns-01}}\n"
        f"wireguard:\n  interfaces:\n"
        f"    - {{name: {pair.server.name}, backend: userspace, "
        f"uapi_socket: {pair.server.socket_path}}}\n"
        f"feed: {{url: 'http://127.0.0.1:{port}/feed', token_file: {token}, long_poll: 10s}}\n"
    )
    backend = UapiBackend(pair.server.name, pair.server.socket_path)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: plan(desired, backend.read().peers).empty)
        assert pair.ping(count=3, interval=0.2).returncode == 0
        del desired[pair.client_public]
        write_atomic(accounts, feed_document(desired, pair.server.name))
        wait_for(lambda: plan(desired, backend.read().peers).empty)
        assert pair.ping(count=2, interval=0.2, wait=1).returncode != 0
    finally:
        agent.send_signal(signal.SIGTERM)
        server.terminate()
        assert agent.wait(timeout=15) == 0
        server.wait(timeout=15)
    assert "s3cret" not in (tmp_path / "agent.log").read_text()
