"""`nodeagent sync --once` on the real kernel module: 20,000 peers from a feed, twice."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from nodeagent.core.reconcile import plan
from nodeagent.wireguard.netlink.backend import KernelBackend
from tests.peerdata import feed_document, make_peers, wide_peer, write_atomic


def test_sync_once_20000_peers_then_nothing(wg_link: str, tmp_path: Path) -> None:
    desired = make_peers(20_000)
    wide = wide_peer(300)
    desired[wide.public_key] = wide
    feed = tmp_path / "feed.json"
    write_atomic(feed, feed_document(desired, wg_link))
    config = tmp_path / "config.yaml"
    config.write_text(
        f"node: {{name: vm-01}}\n"
        f"wireguard:\n  interfaces:\n    - {{name: {wg_link}, backend: kernel}}\n"
        f"feed: {{path: {feed}}}\n"
    )
    cmd = [sys.executable, "-m", "nodeagent", "sync", "--once", "-c", str(config)]

    first = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert first.stdout == f"{wg_link}: added=20001 updated=0 removed=0 unchanged=0\n"
    with KernelBackend(wg_link) as backend:
        got = dict(backend.read().peers)
    assert got == desired

    second = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert second.stdout == f"{wg_link}: added=0 updated=0 removed=0 unchanged=20001\n"
    with KernelBackend(wg_link) as backend:
        assert plan(desired, backend.read().peers).empty
