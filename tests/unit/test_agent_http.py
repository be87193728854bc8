"""`nodeagent run` end to end on loopback: /status, /metrics, /readyz, and `nodeagent status`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.daemon import degraded_config, free_port


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_daemon_serves_status_and_metrics(tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    # A userspace interface whose socket does not exist: the agent keeps running, degraded.
    cfg, iface = degraded_config(
        tmp_path,
        "wgh",
        "load: {interfaces: [lo], capacity: 1Gbit, sample_interval: 1s, window: 2s}\n"
        f'http: {{listen: ["127.0.0.1:{port}"]}}\n'
        "log: {level: debug}\n",
    )
    agent = subprocess.Popen(
        [sys.executable, "-m", "nodeagent", "run", "-c", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                code, body = get(f"{base}/status")
                doc = json.loads(body)
                if doc.get("load") and "reconcile_failing" in doc.get("problems", []):
                    break
            except (OSError, ValueError):
                pass
            assert time.monotonic() < deadline, "agent did not come up"
            time.sleep(0.2)
        assert code == 200 and doc["node"] == "nl-test-01" and doc["status"] == "degraded"
        assert doc["load"]["capacity_bps"] == 1_000_000_000
        assert get(f"{base}/healthz")[0] == 200
        code, body = get(f"{base}/readyz")
        assert code == 503 and b"reconcile_failing" in body
        code, metrics = get(f"{base}/metrics")
        assert code == 200 and b"nodeagent_build_info" in metrics
        assert b"nodeagent_reconcile_errors_total" in metrics
        human = subprocess.run(
            [sys.executable, "-m", "nodeagent", "status", "--url", f"{base}/status"],
            capture_output=True,
            text=True,
        )
        assert "nl-test-01" in human.stdout
    finally:
        agent.terminate()
        _, err = agent.communicate(timeout=15)
    assert agent.returncode == 0
    assert f"peer_sync failed interface={iface} reason=no userspace WireGuard daemon" in err
    assert "127.0.0.1" not in err


@pytest.mark.parametrize("path", ["/status", "/metrics"])
def test_no_server_without_http_section(path: str) -> None:
    # Sanity for the helper above: nothing listens on a fresh port.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{free_port()}{path}", timeout=2)
