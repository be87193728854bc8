"""A wireguard-go restarted under the agent gets every peer back at once, not at the next resync."""

from __future__ import annotations

import signal
from pathlib import Path

from nodeagent.core.reconcile import plan
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.netns.test_agent_daemon import desired_peers, start_agent, wait_for, write_feed


def test_a_restarted_wireguard_go_is_repopulated(tunnel_pair: TunnelPair, tmp_path: Path) -> None:
    pair = tunnel_pair
    desired = desired_peers(pair)
    write_feed(tmp_path / "feed.json", desired, pair.server.name, "v1")
    config = tmp_path / "config.yaml"
    # A drift repair an hour away: only noticing the new socket can bring the peers back.
    config.write_text(
        f"node: {{name: netns-01}}\n"
        f"wireguard:\n  resync_interval: 1h\n  interfaces:\n"
        f"    - name: {pair.server.name}\n      backend: userspace\n"
        f"      uapi_socket: {pair.server.socket_path}\n"
        f"feed: {{path: {tmp_path / 'feed.json'}}}\n"
    )
    log = tmp_path / "agent.log"
    backend = UapiBackend(pair.server.name, pair.server.socket_path)
    agent = start_agent(config, log)
    try:
        wait_for(lambda: plan(desired, backend.read().peers).empty, timeout=30)
        assert pair.ping(count=3, interval=0.2).returncode == 0
        # What a `systemctl restart wireguard-go@…` or a crash and wg-quick up do:
        # a new daemon, the same name and key, and no peers.
        pair.server.stop()
        pair.server.start()
        pair.server.uapi_set(uapi_text.device_lines(pair.server_private, pair.server_port))
        pair.server.up("10.99.0.1/24")
        wait_for(lambda: plan(desired, backend.read().peers).empty, timeout=30)
        # The client still holds a session with the old daemon: it handshakes anew once
        # that goes unanswered (WireGuard's own timers, some 15 s), then traffic flows.
        wait_for(lambda: pair.ping(count=1, wait=2).returncode == 0, timeout=60)
        assert "interface_changed interface=" in log.read_text()
    finally:
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=20)
