"""Done-when 1: real iperf3 traffic through a wireguard-go tunnel, measured by the load meter.

iperf3 runs at a fixed rate in both directions through the tunnel. The
"uplink" is the veth in the server namespace, which carries the encrypted
packets. The sampler reads its counters over rtnetlink inside that namespace;
``ip -s -j link`` (iproute2, not our code) reads the same kernel counters
right after each sample, and each of its readings is timed on its own: the
rate it gives is bytes over the time between *its* readings (the midpoints
of the ``ip`` calls), so a slow ``ip`` start on a busy machine shifts both
ends of its window instead of inflating it. Over every published window the
two must agree within 2%, widened only by how long those ``ip`` calls took,
and the load percentage must be the rate over the configured capacity, in
steps of ``resolution_percent``.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodeagent.config.agent import LoadConfig
from nodeagent.core.model import Peer
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.lab.netns import Namespace
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.load.counters import LinkReader
from nodeagent.load.meter import LoadReport
from nodeagent.load.sampler import LoadSampler
from nodeagent.wireguard.uapi.backend import UapiBackend

REPO = Path(__file__).resolve().parents[2]
CAPACITY = 100_000_000  # configured: 100 Mbit/s
RATE = "60M"  # iperf3 payload rate, each direction
WINDOW = 4.0
RESOLUTION = 1.0
INTERVAL = 1.0


@pytest.fixture(scope="module", autouse=True)
def _iperf3() -> None:
    """iperf3 is this test's own prerequisite: install it, or fail (never skip)."""
    result = subprocess.run(
        [str(REPO / "scripts" / "ensure-apt"), "iperf3"], capture_output=True, text=True
    )
    if result.returncode != 0:
        pytest.fail(f"cannot install iperf3: {result.stderr.strip()}", pytrace=False)


@dataclass(frozen=True)
class KernelReading:
    """iproute2's (rx, tx) bytes of a link, read at ``time`` give or take ``slack`` seconds."""

    time: float
    slack: float
    rx: int
    tx: int


def kernel_counters(ns: Namespace, dev: str) -> KernelReading:
    """Read ``dev``'s counters with iproute2, timed by the midpoint of the ``ip`` call."""
    before = time.monotonic()
    out = ns.run(["ip", "-s", "-j", "link", "show", "dev", dev]).stdout
    after = time.monotonic()
    stats = json.loads(out)[0]["stats64"]
    rx, tx = int(stats["rx"]["bytes"]), int(stats["tx"]["bytes"])
    return KernelReading((before + after) / 2, (after - before) / 2, rx, tx)


def connect_client(pair: TunnelPair) -> None:
    """Add the client as a peer of the server (as the agent would) and wait for a handshake."""
    backend = UapiBackend(pair.server.name, pair.server.socket_path)
    client = Peer(pair.client_public, frozenset({AllowedIP.parse("10.99.0.2/32")}))
    backend.apply(plan({client.public_key: client}, backend.read().peers))
    # The client retries its handshake every 5 s (REKEY_TIMEOUT): allow a few.
    result = pair.ping(count=3, wait=12)
    assert result.returncode == 0, result.stdout


async def test_meter_agrees_with_kernel_counters(tunnel_pair: TunnelPair) -> None:
    pair = tunnel_pair
    connect_client(pair)
    uplink = pair.veth.name_a
    server_ns = pair.server_ns

    server = server_ns.popen(["iperf3", "-s", "-1", "-B", pair.server_tunnel_ip])
    time.sleep(0.5)
    client = pair.client_ns.popen(
        [
            *("iperf3", "-c", pair.server_tunnel_ip, "-u", "-b", RATE, "-l", "1200"),
            *("--bidir", "-t", "16"),
        ]
    )
    config = LoadConfig((uplink,), CAPACITY, INTERVAL, WINDOW, RESOLUTION)
    sampler = LoadSampler(config, reader=LinkReader(netns=server_ns.name))
    # (report, iproute2's reading right after it) per sample
    rows: list[tuple[LoadReport, KernelReading]] = []
    try:
        start = time.monotonic()
        for i in range(14):
            await asyncio.sleep(max(start + i * INTERVAL - time.monotonic(), 0))
            report = await sampler.sample_once()
            rows.append((report, kernel_counters(server_ns, uplink)))
        assert client.wait(timeout=30) == 0, client.communicate()[0]
    finally:
        for proc in (client, server):
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
        sampler._reader.close()

    steps = int(WINDOW / INTERVAL)
    step_bps = CAPACITY * RESOLUTION / 100
    checked = 0
    worst = 0.0
    # From the 3rd second on iperf3 runs at its rate; windows must lie within the run.
    for k in range(3 + steps, len(rows)):
        report, end = rows[k]
        _, begin = rows[k - steps]
        seconds = end.time - begin.time
        want_rx = (end.rx - begin.rx) * 8 / seconds
        want_tx = (end.tx - begin.tx) * 8 / seconds
        # Each reading happened somewhere within its ip call: that much of the window is unsure.
        tolerance = 0.02 + (begin.slack + end.slack) / seconds
        assert report.problems == (), report
        assert report.rx_bps is not None and report.tx_bps is not None
        assert want_rx > 0.5 * CAPACITY and want_tx > 0.5 * CAPACITY, (want_rx, want_tx)
        worst = max(worst, abs(report.rx_bps / want_rx - 1), abs(report.tx_bps / want_tx - 1))
        print(
            f"window ending {k}: meter rx={report.rx_bps} tx={report.tx_bps} "
            f"kernel rx={want_rx:.0f} tx={want_tx:.0f} link={report.link_percent}% "
            f"cpu={report.cpu_percent}% percent={report.percent}% "
            f"tolerance={tolerance:.2%}"
        )
        assert abs(report.rx_bps - want_rx) <= tolerance * want_rx, (report, want_rx)
        assert abs(report.tx_bps - want_tx) <= tolerance * want_tx, (report, want_tx)
        # Load percent is the rate over the configured capacity, on the resolution's grid.
        want_link = max(want_rx, want_tx) / CAPACITY * 100
        assert report.capacity_bps == CAPACITY
        assert report.link_percent is not None
        assert abs(report.link_percent - want_link) <= RESOLUTION, (report, want_link)
        assert report.link_percent == max(report.rx_bps, report.tx_bps) * 100 / CAPACITY
        assert math.isclose(report.link_percent / RESOLUTION, round(report.link_percent))
        assert report.percent == max(report.link_percent, report.cpu_percent or 0.0)
        assert report.rx_bps % step_bps == 0 and report.tx_bps % step_bps == 0
        checked += 1
    print(f"worst relative difference over {checked} windows: {worst:.2%}")
    assert checked >= 5
