"""Collector figures: signed pushes per second from N servers with latency, and the page.

    python3 -m bench.collector_bench [--servers 1000] [--seconds 20] [--no-wrk]

The real collector is measured: ``python -m nodeagent collector -c CONFIG`` (this
interpreter, the repository as its working directory), ``source: push``, on a free
127.0.0.1 port, with its configuration, one 0600 secret file per server and its
SQLite history in a fresh temporary directory. Measured, once it answers ``/healthz``:

1. Pushes: ``--servers`` servers each push a signed status document (built with
   ``nodeagent.publish.status`` and signed with ``nodeagent.publish.push``, as the
   agent does) once a second for ``--seconds`` s, from one aiohttp client with at
   most 200 requests in flight. Prints the pushes per second accepted (204) over the
   run (its ``--seconds``, or longer when the last answers come later), the other
   answers, and p50/p99 latency of a push (from sending it to its answer; the time a
   push waits for a free connection is not counted).
2. Sizes: ``GET /`` and ``GET /api/traffic.json``, plain and gzipped, once every
   server shows a figure.
3. Unless ``--no-wrk`` (or ``wrk`` is not installed): ``wrk -t2 -c200 -d10s`` on
   ``/`` with and without ``Accept-Encoding: gzip``, and on ``/api/traffic.json``
   (gzip); requests per second and p50/p99.

The load generator and ``wrk`` run on the same machine as the collector, so the
figures are floors. A benchmark, not a test: it exits non-zero only when a push was
not accepted, a request failed, or the collector did not start or stop cleanly. The
collector is always stopped, on Ctrl+C too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import aiohttp

from nodeagent.load.meter import LoadReport
from nodeagent.publish.push import signed_headers
from nodeagent.publish.status import encode, status_document

ROOT = Path(__file__).resolve().parent.parent
IN_FLIGHT = 200  # concurrent pushes, as a reverse proxy's upstream pool might allow
START_TIMEOUT = 60.0  # a busy machine, 1,000 nodes and their secret files
STOP_TIMEOUT = 30.0
SETTLE_TIMEOUT = 30.0  # the collector publishes a new snapshot at most every 5 s
COUNTRIES = ["nl", "de", "se", "us", "jp", "fr", "gb", "ch", "ca", "sg"]
CAPACITY_BPS = 10**9


# --- the collector ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_names(servers: int) -> list[str]:
    return [f"n{i:04d}" for i in range(servers)]


def secret(node: str) -> bytes:
    return f"bench-secret-{node}".encode()


def write_config(tmp: Path, port: int, names: list[str]) -> Path:
    """The collector's configuration, and one 0600 secret file per node."""
    lines = [
        "collector:",
        f"  listen: ['127.0.0.1:{port}']",
        f"  database: {json.dumps(str(tmp / 'history.sqlite'))}",
        "  stale_after: 180s",
        "  source: push",
        "log: {level: warning}",
        "nodes:",
    ]
    for i, name in enumerate(names):
        path = tmp / f"{name}.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secret(name) + b"\n")
        cc = COUNTRIES[i % len(COUNTRIES)]
        lines.append(
            f"  - {{name: {name}, host: {name}.example.net, city: City{i % 37}, "
            f"country: Country {cc.upper()}, country_code: {cc}, "
            f"secret_file: {json.dumps(str(path))}}}"
        )
    config = tmp / "collector.yaml"
    config.write_text("\n".join(lines) + "\n")
    return config


def log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start_collector(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        # Its own session: Ctrl+C reaches only this process, which then stops it.
        return subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "collector", "-c", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"collector exited with {proc.returncode}:\n{log_tail(log)}")
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"collector not healthy after {START_TIMEOUT:.0f} s:\n{log_tail(log)}")


def stop_collector(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM, and SIGKILL if it has not exited in ``STOP_TIMEOUT``; its exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


# --- pushes ----------------------------------------------------------------------------


@dataclass
class PushRun:
    offered: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    answers: Counter[str] = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return self.answers["204"]


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def push_body(i: int, node: str, second: int) -> bytes:
    pct = (i * 7 + second) % 100
    bps = pct * CAPACITY_BPS // 100
    report = LoadReport(pct, pct, 3, bps, bps // 2, CAPACITY_BPS, 60)
    return encode(status_document(node, "0.1.0", datetime.now(UTC), report))


async def pushes(base: str, names: list[str], seconds: int) -> PushRun:
    run = PushRun()
    url = f"{base}/api/v1/push"
    slots = asyncio.Semaphore(IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=30)
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(i: int, node: str, second: int, timestamp: int) -> None:
            body = push_body(i, node, second)
            headers = signed_headers(node, secret(node), timestamp, body)
            headers["Content-Type"] = "application/json"
            async with slots:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as r:
                        await r.read()
                        status = str(r.status)
                except (aiohttp.ClientError, TimeoutError) as e:
                    run.answers[type(e).__name__] += 1
                    return
                run.latencies.append(time.perf_counter() - started)
                run.answers[status] += 1

        started = time.monotonic()
        first = int(time.time())  # each node's timestamps rise by one a second: no replay
        tasks: list[asyncio.Task[None]] = []
        for second in range(seconds):
            await asyncio.sleep(max(0.0, started + second - time.monotonic()))
            tasks += [
                asyncio.create_task(one(i, node, second, first + second))
                for i, node in enumerate(names)
            ]
        run.offered = len(tasks)
        await asyncio.gather(*tasks)
        # The pushes fill ``seconds`` one-second slots; a collector that keeps up is done
        # in that time, one that falls behind takes longer.
        run.seconds = max(float(seconds), time.monotonic() - started)
    return run


def report_pushes(run: PushRun, servers: int, seconds: int) -> None:
    others = {k: v for k, v in sorted(run.answers.items()) if k != "204"}
    ms = [x * 1000 for x in run.latencies] or [float("nan")]
    print(
        f"pushes   servers={servers} offered={servers}/s for {seconds} s: "
        f"accepted={run.accepted}/{run.offered} in {run.seconds:.1f} s = "
        f"{run.accepted / run.seconds:.0f} pushes/s  "
        f"p50={percentile(ms, 50):.1f} ms  p99={percentile(ms, 99):.1f} ms"
        + (f"  other answers={others}" if others else "")
    )


# --- the page and its sizes ------------------------------------------------------------


def get(url: str, gzip: bool) -> bytes:
    """The body as sent (gzipped when asked for and given)."""
    request = urllib.request.Request(
        url, headers={"Accept-Encoding": "gzip" if gzip else "identity"}
    )
    with urllib.request.urlopen(request, timeout=30) as r:
        body: bytes = r.read()
        if gzip and r.headers.get("Content-Encoding") != "gzip":
            raise RuntimeError(f"{url}: asked for gzip, got {r.headers.get('Content-Encoding')}")
        return body


def wait_all_shown(base: str, servers: int) -> bool:
    """Whether every server has a figure in the published snapshot, within the timeout."""
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while True:
        traffic = json.loads(get(f"{base}/api/traffic.json", gzip=False))
        shown = sum(1 for v in traffic.values() if v.get("timestamp", -1) != -1)
        if shown >= servers:
            return True
        if time.monotonic() > deadline:
            print(f"sizes    only {shown}/{servers} servers shown after {SETTLE_TIMEOUT:.0f} s")
            return False
        time.sleep(0.5)


def report_sizes(base: str) -> None:
    for path in ("/", "/api/traffic.json"):
        plain = get(base + path, gzip=False)
        gz = get(base + path, gzip=True)
        print(f"size     {path:<18} plain={len(plain) / 1e3:.1f} KB  gzip={len(gz) / 1e3:.1f} KB")


# --- wrk -------------------------------------------------------------------------------


def wrk(url: str, gzip: bool) -> dict[str, float]:
    argv = ["wrk", "-t2", "-c200", "-d10s", "--latency", "--timeout", "10s"]
    if gzip:
        argv += ["-H", "Accept-Encoding: gzip"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    units = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}

    def ms(label: str) -> float:
        m = re.search(rf"^\s*{label}\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if not m:
            raise RuntimeError(f"no {label} latency in wrk's output:\n{out}")
        return float(m.group(1)) * units[m.group(2)]

    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not rps:
        raise RuntimeError(f"no Requests/sec in wrk's output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(rps.group(1)),
        "p50": ms("50%"),
        "p99": ms("99%"),
        "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
        # "connect 0, read 3, write 0, timeout 1"
        "socket_errors": float(sum(map(int, re.findall(r"\d+", socket_errors.group(1)))))
        if socket_errors
        else 0.0,
    }


def run_wrk(base: str) -> bool:
    """Prints the three runs; whether every request succeeded."""
    clean = True
    for path, gzip in (("/", True), ("/", False), ("/api/traffic.json", True)):
        r = wrk(base + path, gzip)
        failed = r["non2xx"] + r["socket_errors"]
        clean = clean and not failed
        print(
            f"wrk      {path:<18} {'gzip' if gzip else 'plain':<5} {r['rps']:8.0f} req/s  "
            f"p50={r['p50']:.1f} ms  p99={r['p99']:.1f} ms"
            + (f"  failed={failed:.0f}" if failed else "")
        )
    return clean


# --- main ------------------------------------------------------------------------------


def bench(tmp: Path, servers: int, seconds: int, use_wrk: bool) -> int:
    names = node_names(servers)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(tmp, port, names)
    log = tmp / "collector.log"
    ok = True
    proc = start_collector(config, log)
    try:
        wait_healthy(proc, base, log)
        run = asyncio.run(pushes(base, names, seconds))
        report_pushes(run, servers, seconds)
        ok = run.accepted == run.offered
        wait_all_shown(base, servers)
        report_sizes(base)
        if use_wrk:
            if shutil.which("wrk") is None:
                print("wrk      not installed: skipped (scripts/ensure-apt wrk)")
            else:
                ok = run_wrk(base) and ok
    finally:
        code = stop_collector(proc)
    if code != 0:
        print(f"collector exited with {code}:\n{log_tail(log)}", file=sys.stderr)
        ok = False
    return 0 if ok else 1


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--servers", type=int, default=1000, help="servers pushing (default 1000)")
    ap.add_argument("--seconds", type=int, default=20, help="seconds of pushes (default 20)")
    ap.add_argument("--no-wrk", action="store_true", help="skip the wrk runs")
    args = ap.parse_args()
    if args.servers < 1 or args.seconds < 1:
        ap.error("--servers and --seconds must be at least 1")
    try:
        with tempfile.TemporaryDirectory(prefix="collector-bench-") as tmp:
            return bench(Path(tmp), args.servers, args.seconds, not args.no_wrk)
    except KeyboardInterrupt:
        print("interrupted; the collector is stopped", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
