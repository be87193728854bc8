"""`make demo`: the whole system runs, shows real figures, and leaves nothing behind.

The demo runs as `python -m nodeagent lab` (a subprocess, as `make demo`
runs it) with stdout a pipe, so it prints plain lines. While it runs the test
reads the collector's /api/v1/servers itself. Afterwards nothing the demo made
may be left: namespaces (nds*, ndc*), host links (ndb*, ndv*), UAPI sockets
(ndw*), processes naming its temporary directory or its interfaces, the
directory itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from nodeagent.core.names import UAPI_SOCKET_DIR
from nodeagent.lab.netns import run

REPO = Path(__file__).resolve().parents[2]
SERVERS = {"nl-ams-01", "de-fra-01", "se-sto-01"}


def leftovers(tmp: Path) -> set[str]:
    """Everything a demo made that still exists (compared before and after: CI runs beside)."""
    found = {f"namespace {n}" for n in run(["ip", "netns", "list"]).stdout.split()
             if n.startswith(("nds", "ndc"))}  # fmt: skip
    for line in run(["ip", "-o", "link"]).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(("ndb", "ndv")):
            found.add(f"link {name}")
    if os.path.isdir(UAPI_SOCKET_DIR):
        found |= {f"socket {s}" for s in os.listdir(UAPI_SOCKET_DIR) if s.startswith("ndw")}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(tmp) in cmd or re.search(r"\bndw[0-9a-f]{8}\b", cmd):
            found.add(f"process {pid} {cmd[:80]}")
    found |= {f"directory {p.name}" for p in tmp.glob("nodeagent-demo-*")}
    return found


class Demo:
    """The demo as a subprocess, its output collected line by line."""

    def __init__(self, tmp: Path, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "lab", "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
            env={**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_line(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            time.sleep(0.1)
        raise AssertionError(f"no line matching {pattern!r}:\n{self.output}")

    def wait(self, timeout: float) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc


def servers(url: str) -> list[dict[str, object]]:
    try:
        with urllib.request.urlopen(url + "api/v1/servers", timeout=2) as r:
            doc = json.loads(r.read())
    except OSError:
        return []
    return list(doc["servers"])


def test_demo_runs_the_whole_system_and_leaves_nothing(tmp_path: Path) -> None:
    before = leftovers(tmp_path)
    demo = Demo(tmp_path, "--duration", "15")
    url = demo.wait_line(r"public status page: (http://127\.0\.0\.1:\d+/)", 60)[1]
    online: set[str] = set()
    rx: dict[str, int] = {}
    load: dict[str, float] = {}
    while demo.proc.poll() is None:
        for s in servers(url):
            name = str(s["name"])
            if s["online"]:
                online.add(name)
                rx[name] = max(rx.get(name, 0), int(s["rx_bps"] or 0))  # type: ignore[call-overload]
                load[name] = max(load.get(name, 0.0), float(s["load_percent"] or 0))  # type: ignore[arg-type]
        time.sleep(0.5)
    assert demo.wait(90) == 0, demo.output
    out = demo.output
    print(out)
    assert online == SERVERS, out
    # iperf3 ran through every server's tunnels at 2 Mbit/s or more: only it crosses their uplinks.
    assert all(rx[name] >= 1_000_000 for name in SERVERS), rx
    assert all(load[name] > 0 for name in SERVERS), load
    assert out.count("a WireGuard customer's tunnel is up") == 2, out
    assert "se-sto-01: an OpenVPN customer logged in" in out
    for step in (
        "a new customer signs up on de-fra-01",
        "de-fra-01: the agent added the peer",
        "account on nl-ams-01 ends in",
        "nl-ams-01: the agent removed the expired peer",
    ):
        assert step in out, (step, out)
    assert re.search(r"^\[0:15/0:15\] nl-ams-01 load", out, re.M), out
    # Servers' totals only: no customer's address, key or username.
    for leak in (r"10\.100\.", r"172\.16\.", r"\bdemo-[0-9a-f]{8}\b", r"[A-Za-z0-9+/]{43}="):
        assert not re.search(leak, out), leak
    assert leftovers(tmp_path) - before == set()


def test_sigint_while_running_tears_everything_down(tmp_path: Path) -> None:
    before = leftovers(tmp_path)
    demo = Demo(tmp_path, "--duration", "300")
    demo.wait_line(r"^\[0:0\d/5:00\] ", 90)
    assert leftovers(tmp_path) - before, "the demo's things were seen while it ran"
    demo.proc.send_signal(signal.SIGINT)
    assert demo.wait(60) == 0, demo.output
    assert "SIGINT: stopping" in demo.output
    assert leftovers(tmp_path) - before == set()


def test_sigterm_during_setup_tears_everything_down(tmp_path: Path) -> None:
    before = leftovers(tmp_path)
    demo = Demo(tmp_path)
    demo.wait_line(r"^starting the feed server", 60)
    time.sleep(0.5)
    demo.proc.send_signal(signal.SIGTERM)
    assert demo.wait(60) == 128 + signal.SIGTERM, demo.output
    assert "SIGTERM: stopping" in demo.output
    assert leftovers(tmp_path) - before == set()
