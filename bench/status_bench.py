"""/status under load while a 20,000-peer reconcile runs, and the agent's CPU at idle (root).

    python bench/status_bench.py [--peers 20000] [--connections 200] [--seconds 10] [--idle 30]

A serving process is started that is shaped like the agent: one event loop
with the HTTP server (``nodeagent.http``), the load sampler at a 1 s interval
and a reconciler that runs ``sync.sync_interface`` in a worker thread against
a real wireguard-go interface (first a load of ``--peers`` peers, then full
updates of every peer's allowed IPs, back to back). Measured:

- CPU of the serving process at idle (sampler only, no requests) over ``--idle`` s;
- ``wrk`` against ``/status`` with ``--connections`` concurrent connections,
  first without a reconcile, then while reconciles run: requests per second
  and latency percentiles, side by side.

A benchmark, not a test: it prints figures and asserts only that requests
succeeded and reconciles completed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import psutil

from nodeagent import __version__
from nodeagent.config import LoadConfig
from nodeagent.http import HttpServer, Sources, make_app
from nodeagent.lab.netns import Lab, missing_prerequisites
from nodeagent.load.sampler import LoadSampler
from nodeagent.metrics import MetricsSnapshot, ReconcileStats, make_registry
from nodeagent.model import DesiredInterface, Peer
from nodeagent.status import StatusBoard
from nodeagent.sync import sync_interface
from nodeagent.wireguard.uapi import UapiBackend
from tests.peerdata import make_peers, v4

# --- the serving process (agent-shaped) ---------------------------------------------


async def serve(port: int, interface: str, socket_path: str, peers: int) -> None:
    board = StatusBoard("bench-01", __version__)
    stats = ReconcileStats()
    sampler = LoadSampler(
        LoadConfig(("lo",), 1_000_000_000, 1.0, 60.0, 1.0), on_report=lambda r: board.update(r)
    )
    sources = Sources(
        status=lambda: board.body,
        registry=make_registry(
            lambda: MetricsSnapshot(
                load=sampler.meter.report, links=sampler.links, reconcile=stats.snapshot()
            )
        ),
        health=lambda: None,
        ready=lambda: None,
    )
    backend = UapiBackend(interface, socket_path)
    first = make_peers(peers)
    second = {k: Peer(k, frozenset({v4(i, 11)}), p.preshared_key) for i, (k, p) in
              enumerate(first.items())}  # fmt: skip
    reconciling = asyncio.Event()
    passes: list[dict[str, float]] = []

    async def reconciler() -> None:
        flip = False
        while True:
            await reconciling.wait()
            desired = DesiredInterface(second if flip else first)
            flip = not flip
            started = time.monotonic()
            outcome = await asyncio.to_thread(sync_interface, backend, desired, _now())
            stats.record(outcome)
            passes.append(
                {
                    "seconds": time.monotonic() - started,
                    "added": outcome.added,
                    "updated": outcome.updated,
                    "removed": outcome.removed,
                }
            )

    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    async with HttpServer(make_app(sources), (f"127.0.0.1:{port}",)):
        tasks = [asyncio.create_task(sampler.run()), asyncio.create_task(reconciler())]
        print("ready", flush=True)
        while line := (await reader.readline()).decode().strip():
            if line == "reconcile on":
                passes.clear()
                reconciling.set()
            elif line == "reconcile off":
                reconciling.clear()
                print(json.dumps(passes), flush=True)
            elif line == "quit":
                break
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _now() -> datetime:
    return datetime.now(UTC)


# --- the driver -----------------------------------------------------------------------


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
        "socket_errors": 1.0 if socket_errors else 0.0,
    }


def cpu_percent(pid: int, seconds: float) -> float:
    proc = psutil.Process(pid)
    t0 = sum(proc.cpu_times()[:2])
    time.sleep(seconds)
    return float(sum(proc.cpu_times()[:2]) - t0) / seconds * 100


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=20_000)
    ap.add_argument("--connections", type=int, default=200)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--idle", type=float, default=30.0)
    ap.add_argument("--port", type=int, default=19586)
    ap.add_argument("--serve", nargs=2, metavar=("INTERFACE", "SOCKET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(serve(args.port, args.serve[0], args.serve[1], args.peers))
        return 0

    missing = missing_prerequisites()
    if shutil.which("wrk") is None:
        missing.append("wrk (scripts/ensure-apt wrk)")
    if missing:
        print("cannot run:", ", ".join(missing), file=sys.stderr)
        return 1

    url = f"http://127.0.0.1:{args.port}/status"
    with Lab() as lab:
        ns = lab.namespace("nab")
        wg = lab.wireguard_go(ns, "wgsb")
        agent = subprocess.Popen(
            [sys.executable, __file__, "--serve", wg.name, wg.socket_path,
             "--peers", str(args.peers), "--port", str(args.port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert agent.stdin and agent.stdout
        try:
            assert agent.stdout.readline().strip() == "ready"
            time.sleep(3)  # let the sampler settle
            idle = cpu_percent(agent.pid, args.idle)
            quiet = wrk(url, args.connections, args.seconds)
            # Load the peers once, so the measured passes are steady full updates.
            agent.stdin.write("reconcile on\n")
            agent.stdin.flush()
            busy = wrk(url, args.connections, args.seconds)
            agent.stdin.write("reconcile off\n")
            agent.stdin.flush()
            passes = json.loads(agent.stdout.readline())
            agent.stdin.write("quit\n")
            agent.stdin.flush()
            agent.wait(30)
        finally:
            if agent.poll() is None:
                agent.kill()
                agent.wait()

    print(f"# /status with {args.connections} concurrent connections, {args.seconds} s each (wrk)")
    print(f"{'':28} {'req/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'non-2xx':>8}")
    for label, r in (("idle agent", quiet), (f"during {args.peers}-peer reconciles", busy)):
        print(
            f"{label:28} {r['rps']:9.0f} {r['p50']:8.2f} {r['p90']:8.2f} {r['p99']:8.2f} "
            f"{r['non2xx']:8.0f}"
        )
    print(f"# reconcile passes during the busy run: {len(passes)}")
    for p in passes:
        print(
            f"  {p['seconds']:6.2f} s  added={p['added']:.0f} updated={p['updated']:.0f} "
            f"removed={p['removed']:.0f}"
        )
    print(
        f"# agent CPU at idle, 1 s sample interval, over {args.idle:g} s: {idle:.2f}% of one core"
    )
    ok = quiet["non2xx"] == 0 and busy["non2xx"] == 0 and passes
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
