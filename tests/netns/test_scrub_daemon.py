"""The daemon's scrubber with the real thresholds: an idle client's endpoint is wiped in time.

This takes about three and a half minutes on purpose: the documented floor is
180 s of silence (WireGuard's REJECT_AFTER_TIME), and a test that shortened it
would prove nothing about the configuration operators actually run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

from nodeagent.core.model import format_key
from nodeagent.core.reconcile import plan
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.netns.test_agent_daemon import (
    desired_peers,
    start_agent,
    wait_for,
    write_config,
    write_feed,
)

IDLE_AFTER, INTERVAL = 180.0, 30.0  # the configuration defaults


def client_endpoint(pair: TunnelPair) -> str:
    """The endpoint the server holds for the client, as `wg show` prints it."""
    out = pair.server_ns.run(["wg", "show", pair.server.name, "endpoints"]).stdout
    for line in out.splitlines():
        key, _, endpoint = line.partition("\t")
        if key.strip() == format_key(pair.client_public):
            return endpoint.strip()
    raise AssertionError("client peer not on the server")


def test_idle_endpoint_wiped_within_idle_after_plus_interval(
    tunnel_pair: TunnelPair, tmp_path: Path
) -> None:
    pair = tunnel_pair
    desired = desired_peers(pair)
    write_feed(tmp_path / "feed.json", desired, pair.server.name, "v1")
    config = write_config(tmp_path, pair)
    assert "privacy" not in config.read_text()  # defaults: 180s idle, 30s interval
    backend = UapiBackend(pair.server.name, pair.server.socket_path)
    agent = start_agent(config, tmp_path / "agent.log")
    try:
        wait_for(lambda: plan(desired, backend.read().peers).empty)
        assert pair.ping(count=3, interval=0.2).returncode == 0
        last_packet = time.monotonic()
        assert client_endpoint(pair) != "(none)"
        while client_endpoint(pair) != "(none)":
            elapsed = time.monotonic() - last_packet
            assert elapsed < IDLE_AFTER + INTERVAL + 5, f"endpoint still held after {elapsed:.0f}s"
            time.sleep(1.0)
        wiped_after = time.monotonic() - last_packet
        print(f"\nscrub: endpoint gone {wiped_after:.1f}s after the client's last packet")
        # Never before the idle threshold: that would have cut a live session.
        assert wiped_after >= IDLE_AFTER - 5
        # The peer itself is intact, and the client reconnects by itself.
        assert plan(desired, backend.read().peers).empty
        assert pair.ping(count=5, interval=0.5, wait=5).returncode == 0
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=15) == 0
