"""/status under load while a 20,000-peer reconcile runs, and the agent's CPU at idle (root).

    python bench/status_bench.py [--peers 20000] [--interfaces 1] [--connections 200]
                                 [--seconds 10] [--idle 30]

The real daemon is measured: ``python -m nodeagent run -c CONFIG`` (this
interpreter), managing a real wireguard-go interface in a lab namespace
through its UAPI socket, with a file feed, the HTTP server on 127.0.0.1, and
the load sampler at a 1 s interval. The feed first holds ``--peers`` peers,
split evenly over ``--interfaces`` wireguard-go interfaces (each takes 65,536:
100,000 need two); the initial load is applied before anything is measured.
Measured:

- CPU of the daemon (with its HTTP serving process) at idle (no requests, no
  feed changes) over ``--idle`` s;
  whatever the daemon does on its own at idle (sampler, scrubber, periodic
  read-back) counts;
- ``wrk`` against ``/status`` with ``--connections`` concurrent connections,
  first at idle, then while the daemon reconciles: a driver alternates the
  feed file (written atomically) between two documents of ``--peers`` peers
  that differ in every peer's allowed IPs, and writes the next one as soon as
  the daemon logs the pass of every interface (``peer_sync applied ...
  ms=N``). The daemon polls
  its file feed once a second, so passes follow each other with up to 1 s
  between them. Requests per second and latency percentiles, side by side,
  and each pass with the duration the daemon reported.

A benchmark, not a test: it prints figures, and exits non-zero only when
requests failed or no reconcile pass completed during the busy run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from nodeagent.core.model import Peer
from nodeagent.lab.netns import missing_prerequisites
from nodeagent.lab.tunnel import Lab
from nodeagent.lab.wireguard_go import WireguardGo
from tests.peerdata import interfaces_document, make_peers, v4, write_atomic

ROOT = Path(__file__).resolve().parent.parent
LOAD_TIMEOUT = 600.0  # the initial load of 20,000 peers on a busy machine
STOP_TIMEOUT = 60.0  # the daemon lets a pass in flight finish before it exits

PASS_LINE = re.compile(
    r"peer_sync applied interface=(?P<interface>\S+) added=(?P<added>\d+) "
    r"updated=(?P<updated>\d+) removed=(?P<removed>\d+) unchanged=(?P<unchanged>\d+) "
    r"ms=(?P<ms>\d+)"
)

# --- the daemon and its log -----------------------------------------------------------


@dataclass(frozen=True)
class Pass:
    """One reconcile pass of one interface, as the daemon logged it."""

    interface: str
    added: int
    updated: int
    removed: int
    unchanged: int
    ms: int

    @property
    def held(self) -> int:
        """Peers the interface holds after the pass."""
        return self.added + self.updated + self.unchanged


class DaemonLog:
    """The daemon's log file, read incrementally for ``peer_sync applied`` lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def passes(self) -> list[Pass]:
        """The passes logged since the previous call."""
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        self._offset += len(data)
        *lines, self._partial = (self._partial + data).split(b"\n")
        out: list[Pass] = []
        for line in lines:
            m = PASS_LINE.search(line.decode(errors="replace"))
            if m:
                counts = ("added", "updated", "removed", "unchanged", "ms")
                out.append(Pass(m.group("interface"), *(int(m.group(k)) for k in counts)))
        return out

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.path.read_text(errors="replace").splitlines()[-lines:])

    def problems(self) -> list[str]:
        text = self.path.read_text(errors="replace")
        return [ln for ln in text.splitlines() if ln.startswith(("WARNING", "ERROR"))]


def write_config(tmp: Path, wgs: list[WireguardGo], feed: Path, port: int) -> Path:
    config = tmp / "config.yaml"
    config.write_text(
        "node: {name: bench-01}\n"
        "wireguard:\n  interfaces:\n"
        + "".join(
            f"    - {{name: {wg.name}, backend: userspace, uapi_socket: {wg.socket_path}}}\n"
            for wg in wgs
        )
        + f"feed: {{path: {feed}}}\n"
        f"load: {{interfaces: [lo], capacity: 1Gbit, sample_interval: 1s, window: 60s}}\n"
        f"http: {{listen: ['127.0.0.1:{port}']}}\n"
        f"log: {{level: info}}\n"
    )
    return config


def start_daemon(argv: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    with log.open("ab") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def stop_daemon(agent: subprocess.Popen[bytes]) -> None:
    """SIGTERM, and SIGKILL if it has not exited in ``STOP_TIMEOUT``."""
    if agent.poll() is None:
        agent.terminate()
        try:
            agent.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()


def wait_for_load(
    agent: subprocess.Popen[bytes], log: DaemonLog, peers: dict[str, int]
) -> list[Pass]:
    """Block until a pass has left each interface holding all of its ``peers``."""
    deadline = time.monotonic() + LOAD_TIMEOUT
    loaded: dict[str, Pass] = {}
    while time.monotonic() < deadline:
        for p in log.passes():
            if p.held == peers.get(p.interface):
                loaded[p.interface] = p
        if loaded.keys() == peers.keys():
            return list(loaded.values())
        if agent.poll() is not None:
            raise SystemExit(f"the daemon exited with {agent.returncode}:\n{log.tail()}")
        time.sleep(0.05)
    raise SystemExit(f"the initial load was not applied in {LOAD_TIMEOUT:.0f} s:\n{log.tail()}")


class Flipper(threading.Thread):
    """Alternates the feed between two documents, the next one once the daemon logged a pass."""

    def __init__(
        self,
        feed: Path,
        documents: tuple[str, str],
        interfaces: set[str],
        log: DaemonLog,
        alive: Callable[[], bool],
    ) -> None:
        super().__init__(name="flipper", daemon=True)
        self.feed, self.documents, self.log, self.alive = feed, documents, log, alive
        self.interfaces = interfaces
        self.passes: list[Pass] = []
        self._stopping = threading.Event()

    def run(self) -> None:
        turn = 0
        while not self._stopping.is_set() and self.alive():
            write_atomic(self.feed, self.documents[turn % 2])
            turn += 1
            waiting = set(self.interfaces)
            while waiting and not self._stopping.is_set() and self.alive():
                done = self.log.passes()
                self.passes.extend(done)
                waiting -= {p.interface for p in done}
                time.sleep(0.02)

    def stop(self) -> list[Pass]:
        """Stop flipping; the passes completed so far (a pass in flight is not waited for)."""
        self._stopping.set()
        self.join()
        return self.passes


# --- measuring ------------------------------------------------------------------------


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0}

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * units[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    assert rps and total, out
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)),
        "requests": float(total.group(1)),
        "p50": ms("50%"),
        "p90": ms("90%"),
        "p99": ms("99%"),
        "non2xx": float(errors.group(1)) if errors else 0.0,
        # "connect 0, read 3, write 0, timeout 1"
        "socket_errors": float(sum(map(int, re.findall(r"\d+", socket_errors.group(1)))))
        if socket_errors
        else 0.0,
    }


def cpu_percent(pid: int, seconds: float) -> float:
    """CPU of the daemon and of its HTTP serving process, in % of one core."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children()]

    def used() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in procs)

    t0 = used()
    time.sleep(seconds)
    return float(used() - t0) / seconds * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=20_000)
    ap.add_argument(
        "--interfaces",
        type=int,
        default=1,
        help="split the peers over this many wireguard-go interfaces (each takes 65,536)",
    )
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=19586)
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    args = ap.parse_args()

    missing = missing_prerequisites()
    if shutil.which("wrk") is None:
        missing.append("wrk (scripts/ensure-apt wrk)")
    if missing:
        print("cannot run:", ", ".join(missing), file=sys.stderr)
        return 1

    first = make_peers(args.peers)
    second = {k: Peer(k, frozenset({v4(i, 11)}), p.preshared_key) for i, (k, p) in
              enumerate(first.items())}  # fmt: skip
    url = f"http://127.0.0.1:{args.port}/status"
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="status-bench-") as tmp_name:
        tmp = Path(tmp_name)
        ns = lab.namespace("nab")
        wgs = [lab.wireguard_go(ns, "wgsb") for _ in range(args.interfaces)]

        def document(peers: dict[bytes, Peer], version: str) -> str:
            every = list(peers.items())
            n = len(wgs)
            return interfaces_document(
                {wg.name: dict(every[i::n]) for i, wg in enumerate(wgs)}, version
            )

        feed = tmp / "feed.json"
        documents = (document(second, "second"), document(first, "first"))
        write_atomic(feed, document(first, "initial"))
        shares = {wg.name: len(range(i, len(first), len(wgs))) for i, wg in enumerate(wgs)}
        config = write_config(tmp, wgs, feed, args.port)
        argv = [sys.executable, "-m", "nodeagent", "run", "-c", str(config)]
        log = DaemonLog(tmp / "agent.log")
        log.path.touch()
        agent = start_daemon(argv, log.path)
        try:
            load = wait_for_load(agent, log, shares)
            time.sleep(3)  # let the sampler settle
            idle = cpu_percent(agent.pid, args.idle)
            quiet = wrk(url, args.connections, args.seconds)
            flipper = Flipper(feed, documents, set(shares), log, lambda: agent.poll() is None)
            flipper.start()
            try:
                busy = wrk(url, args.connections, args.seconds)
            finally:
                passes = flipper.stop()
            problems = log.problems()
        finally:
            stop_daemon(agent)

    print(f"# agent: {shlex.join(argv)}")
    print(
        f"# {args.peers} peers on {len(wgs)} wireguard-go interface(s) "
        f"({', '.join(f'{n}: {k}' for n, k in shares.items())}); "
        f"initial load applied in {max(p.ms for p in load) / 1000:.2f} s"
    )
    print(f"# /status with {args.connections} concurrent connections, {args.seconds} s each (wrk)")
    print(f"{'':28} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, r in (("idle agent", quiet), (f"during {args.peers}-peer reconciles", busy)):
        print(
            f"{label:28} {r['rps']:9.0f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} "
            f"{r['non2xx']:8.0f}"
        )
    for label, r in (("idle", quiet), ("busy", busy)):
        if r["socket_errors"]:
            print(f"# {label} run: {r['socket_errors']:.0f} socket errors (wrk)")
    print(f"# reconcile passes during the busy run (ms= as the daemon logged): {len(passes)}")
    for p in passes:
        print(
            f"  {p.ms / 1000:6.2f} s  {p.interface} added={p.added} updated={p.updated} "
            f"removed={p.removed} unchanged={p.unchanged}"
        )
    print(
        f"# agent CPU at idle, 1 s sample interval, over {args.idle:g} s: {idle:.2f}% of one core"
    )
    for line in problems:
        print(f"# daemon log: {line}")
    failed = any(r["non2xx"] or r["socket_errors"] for r in (quiet, busy))
    if args.json:
        figures = {"peers": args.peers, "interfaces": len(wgs), "idle_p99_ms": quiet["p99"],
                   "busy_p99_ms": busy["p99"], "passes": len(passes)}  # fmt: skip
        Path(args.json).write_text(json.dumps(figures))
    return 0 if passes and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
