"""The scale goals, each beside today's figure, from one run of the benchmarks behind them (root).

    python -m bench.scale_table [--peers 60000] [--kernel-peers 20000] [--million 1000000]
                                [--skip-kernel] [--only NAMES] [--out /var/tmp/nodeagent-bench]

Runs, one after another (nothing else should run on the machine meanwhile):

- ``bench/idle_cpu.py`` on the host: the real daemon on wireguard-go with
  ``--peers`` peers (wireguard-go takes at most 65,536), default intervals;
  idle CPU and resident memory over two drift-repair passes, the peak while it
  takes a new full snapshot, and a restarted wireguard-go repopulated; then
  the same with 100,000 peers over two wireguard-go interfaces (``idle100k``);
- ``bench/status_bench.py``: ``/status`` p99 (wrk, 200 connections) while the
  daemon reconciles ``--peers`` peers over and over; then 100,000 peers over
  two wireguard-go interfaces (``status100k``);
- ``bench/feed_bench.py``: feed change to peer on the interface, p99, with
  ``--peers`` peers already there;
- ``bench/kernel_bench.py`` in the kernel VM: the drift-repair read of
  ``--kernel-peers`` peers against ``wg show dump``, and the full apply of
  ``--million`` peers against ``wg setconf`` with its resident memory.

Each writes its figures as JSON into ``--out``; their whole output is kept
there too (``*.log``). Then the table is printed. A row whose benchmark failed
says so; the exit status is non-zero only if one failed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
Figures = dict[str, Any]


@dataclass(frozen=True)
class Row:
    measure: str
    goal: str
    source: str  # the benchmark whose figures it reads
    today: Callable[[Figures], str]


def _mb(x: float) -> str:
    return f"{x:.0f} MB"


ROWS = (
    Row(
        "resident memory after two drift-repair passes (wireguard-go, host)",
        "<= 80 MB at 100k: imports + <= 300 B a peer",
        "idle",
        lambda f: f"{_mb(f['resident_mb'])} at {f['on_interface']:,}",
    ),
    Row(
        "the same at 100,000 (two wireguard-go interfaces of 50,000, host)",
        "<= 80 MB",
        "idle100k",
        lambda f: f"{_mb(f['resident_mb'])} at {f['peers']:,}",
    ),
    Row(
        "peak while taking a new full snapshot of that size",
        "<= 1.5x resident",
        "idle",
        lambda f: f"{_mb(f['snapshot_peak_mb'])}, {f['snapshot_peak_mb'] / f['resident_mb']:.2f}x",
    ),
    Row(
        "the same at 100,000 (two wireguard-go interfaces of 50,000, host)",
        "<= 1.5x resident",
        "idle100k",
        lambda f: f"{_mb(f['snapshot_peak_mb'])}, {f['snapshot_peak_mb'] / f['resident_mb']:.2f}x",
    ),
    Row(
        "1,000,000 peers (kernel, VM): full apply / wg setconf; resident",
        "<= 1.0x; <= 400 MB",
        "kernel",
        lambda f: (
            f"{f['million_ratio']:.2f}x ({f['million_peers']:,} peers); "
            f"{_mb(f['million_rss_mb'])} (peak {_mb(f['million_peak_mb'])})"
        ),
    ),
    Row(
        "idle CPU, default intervals (wireguard-go, host)",
        "<= 0.5 % of a core at 100k",
        "idle",
        lambda f: f"{f['idle_cpu_percent']:.2f} % at {f['on_interface']:,}",
    ),
    Row(
        "the same at 100,000 (two wireguard-go interfaces of 50,000, host)",
        "<= 0.5 % of a core",
        "idle100k",
        lambda f: f"{f['idle_cpu_percent']:.2f} % at {f['peers']:,}",
    ),
    Row(
        "drift-repair read / wg show dump (kernel, VM)",
        "<= 1.5x",
        "kernel",
        lambda f: (
            f"{f['digest_ratio']:.2f}x at {f['read_peers']:,} (the drift check: a configuration "
            f"digest; a full read-back when it differs: {f['read_ratio']:.2f}x)"
        ),
    ),
    Row(
        "interface recreated -> every peer back (wireguard-go restarted)",
        "<= 2 s",
        "idle",
        lambda f: (
            f"noticed after {f['repopulate_noticed_s']:.2f} s; every peer back after "
            f"{f['repopulate_s']:.2f} s for {f['on_interface']:,} "
            f"(`wg setconf` of them into a fresh one: {f['setconf_s']:.2f} s)"
        ),
    ),
    Row(
        "/status p99 while a full reconcile runs (wrk, 200 connections)",
        "< 50 ms at 100k",
        "status",
        lambda f: f"{f['busy_p99_ms']:.1f} ms at {f['peers']:,} (idle {f['idle_p99_ms']:.1f} ms)",
    ),
    Row(
        "the same at 100,000 (two wireguard-go interfaces of 50,000, host)",
        "< 50 ms",
        "status100k",
        lambda f: f"{f['busy_p99_ms']:.1f} ms at {f['peers']:,} (idle {f['idle_p99_ms']:.1f} ms)",
    ),
    Row(
        "feed change -> peer on the interface, p99",
        "< 100 ms at 100k",
        "feed",
        lambda f: f"{f['p99_ms']:.1f} ms at {f['base_peers']:,}",
    ),
)


def run(name: str, argv: list[str], out: Path) -> Figures | str:
    """Run one benchmark with ``--json``; its figures, or why there are none."""
    figures, log = out / f"{name}.json", out / f"{name}.log"
    figures.unlink(missing_ok=True)
    print(f"# {name}: {' '.join(argv)}", flush=True)
    started = time.monotonic()
    with log.open("w") as f:
        rc = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode
    print(f"#   {time.monotonic() - started:.0f} s, exit {rc}, output in {log}", flush=True)
    return earlier(name, out) or f"failed (exit {rc}, see {log})"


def earlier(name: str, out: Path) -> Figures | None:
    """The figures a run of benchmark ``name`` left in ``out``, if any."""
    figures, log = out / f"{name}.json", out / f"{name}.log"
    if figures.exists():
        loaded: Figures = json.loads(figures.read_text())
        return loaded
    # Inside the kernel VM the host's files are read-only: the figures come as a line.
    if log.exists():
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith("figures: {"):
                parsed: Figures = json.loads(line.partition(" ")[2])
                return parsed
    return None


def machine() -> str:
    cpus = os.cpu_count()
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.partition(":")[2].strip()
            break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {cpus} CPUs ({model}), {mem:.0f} GiB, Linux {platform.release()}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=60_000)
    ap.add_argument("--kernel-peers", type=int, default=20_000)
    ap.add_argument("--million", type=int, default=1_000_000)
    ap.add_argument("--vm-memory", default="8G")
    ap.add_argument("--skip-kernel", action="store_true")
    ap.add_argument("--out", default="/var/tmp/nodeagent-bench")
    ap.add_argument(
        "--only",
        metavar="NAMES",
        help="run only these (comma-separated: idle,idle100k,status,status100k,feed,kernel); "
        "the table takes the other rows from the last run's figures in --out",
    )
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    results: dict[str, Figures | str] = {}
    jobs: list[tuple[str, list[str]]] = [
        ("idle", [py, "bench/idle_cpu.py", "--peers", str(args.peers), "--pyspy", "0"]),
        (
            "idle100k",
            [py, "bench/idle_cpu.py", "--peers", "100000", "--interfaces", "2", "--pyspy", "0"],
        ),
        ("status", [py, "bench/status_bench.py", "--peers", str(args.peers), "--idle", "5"]),
        (
            "status100k",
            [py, "bench/status_bench.py", "--peers", "100000", "--interfaces", "2", "--idle", "5"],
        ),
        ("feed", [py, "bench/feed_bench.py", "--base", str(args.peers), "--skip-snapshot"]),
    ]
    if not args.skip_kernel:
        inner = [py, "-m", "bench.kernel_bench", "--peers", str(args.kernel_peers),
                 "--million", str(args.million)]  # fmt: skip
        jobs.append(("kernel", [py, "-m", "tests.kernel.vm", "--memory", args.vm_memory, "--",
                                *inner]))  # fmt: skip
    only = set(args.only.split(",")) if args.only else None
    for name, argv in jobs:
        if only is None or name in only:
            results[name] = run(name, [*argv, "--json", str(out / f"{name}.json")], out)
        else:
            results[name] = earlier(name, out) or "not run (--only), no earlier figures"

    print(f"\n# {machine()}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M %Z')}, commit {git_head()}\n")
    print("| measure | goal | today |")
    print("| --- | --- | --- |")
    failed = False
    for row in ROWS:
        got = results.get(row.source, "not run (--skip-kernel)")
        if isinstance(got, str):
            today, failed = got, failed or row.source in results
        else:
            try:
                today = row.today(got)
            except (KeyError, TypeError, ZeroDivisionError) as e:
                today, failed = f"no figure ({type(e).__name__} {e})", True
        print(f"| {row.measure} | {row.goal} | {today} |")
    return 1 if failed else 0


def git_head() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                       text=True)  # fmt: skip
    return r.stdout.strip() or "unknown"


if __name__ == "__main__":
    raise SystemExit(main())
