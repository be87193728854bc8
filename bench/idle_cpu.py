"""The real daemon at scale on wireguard-go: idle CPU, memory, snapshot peak, recreation (root).

    python bench/idle_cpu.py [--peers 60000] [--interfaces 1] [--measure 125] [--pyspy 120]
                             [--out /var/tmp/idle] [--json FILE]

One wireguard-go interface in a fresh namespace (or ``--interfaces`` of them,
the peers split evenly: wireguard-go takes 65,536 peers, so 100,000 need two);
``nodeagent run`` inside the same namespace with a file feed of ``--peers``
peers and the default intervals (60 s resync, 30 s scrub), load sampling every
1 s on the namespace's loopback, and the HTTP endpoints (so its serving
process runs, as on a real server; nothing polls them). Once the first pass
has applied every peer and the first drift-repair pass has read the interface
back to check it (``--settle``, 75 s), nothing happens: ``/proc/PID/stat``
utime+stime of the daemon and of its HTTP serving process is read over
``--measure`` seconds (no profiler attached), then py-spy (if ``--pyspy`` >
0) samples it non-blocking for that many seconds and the samples are summed
by function. Prints CPU as % of one core, the resident memory (the daemon's
VmRSS plus the private memory of its serving process, which shares the rest)
and VmHWM. The default window (125 s) spans two drift-repair passes and four
scrub passes, so the resident memory
at its end is the one "after two drift-repair passes".

Then, with the profiler detached:
- the peak while taking a new full snapshot of the same size: VmHWM is reset
  (``/proc/PID/clear_refs``), a new feed version (100 peers removed, 100
  added, the rest the same) is written, and VmHWM is read once the interface
  holds the change; reported as MB and as a ratio to the resident memory;
- repopulation: wireguard-go is stopped and started again (the same name,
  no peers, as a ``systemctl restart`` leaves it) and the time until the
  interface holds every peer again is measured from the new daemon's start,
  beside the time until the agent noticed it (its ``interface_changed`` log
  line, timed as it arrives: the agent's lines carry no time) and the time
  ``wg setconf`` takes for the same peers into a fresh one.

``--json FILE`` writes the figures for ``bench/scale_table.py``. A benchmark,
not a test.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nodeagent.core.model import Peer, format_key
from nodeagent.lab.netns import missing_prerequisites
from nodeagent.lab.tunnel import Lab
from nodeagent.lab.wireguard_go import WireguardGo
from nodeagent.wireguard.uapi.backend import UapiBackend, exchange
from tests.peerdata import interfaces_document, make_peers, write_atomic

ROOT = Path(__file__).resolve().parent.parent
TICKS = os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The daemon's child processes: its HTTP serving process."""
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def stat_cpu(path: str) -> float:
    """utime + stime of a ``/proc/.../stat`` file, in seconds."""
    with open(path) as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def cpu_parts(pid: int) -> dict[str, float]:
    """CPU seconds of the daemon's event loop (its main thread), of its other threads (the
    passes' workers; a process's figure keeps what its exited threads used), and of its
    serving process."""
    loop = stat_cpu(f"/proc/{pid}/task/{pid}/stat")
    return {
        "event loop": loop,
        "worker threads": stat_cpu(f"/proc/{pid}/stat") - loop,
        "serving process": sum(stat_cpu(f"/proc/{c}/stat") for c in children(pid)),
    }


def private_kb(pid: int) -> int:
    """Memory only this process holds (the pages it shares with the daemon not counted)."""
    total = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith(("Private_Clean:", "Private_Dirty:")):
                total += int(line.split()[1])
    return total


def served_kb(pid: int) -> int:
    """What the daemon's serving process holds of its own."""
    return sum(private_kb(c) for c in children(pid))


def resident_kb(pid: int) -> int:
    """The daemon's VmRSS plus what its serving process holds of its own."""
    return status_kb(pid, "VmRSS") + served_kb(pid)


def status_kb(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def summarize(raw: Path, top: int) -> None:
    """Sum py-spy's collapsed stacks: self time by function, and inclusive by function."""
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        n = int(count_text)
        total += n
        frames = [f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
                  for f in stack.split(";") if f]  # fmt: skip
        if not frames:
            continue
        own[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    print(f"\npy-spy: {total} samples of a running (non-idle) thread")
    print("self time, top functions:")
    for name, n in own.most_common(top):
        print(f"  {100 * n / max(total, 1):5.1f} %  {name}")
    print("inclusive time, top functions:")
    for name, n in incl.most_common(top * 2):
        print(f"  {100 * n / max(total, 1):5.1f} %  {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=int, default=60_000)
    ap.add_argument(
        "--interfaces",
        type=int,
        default=1,
        help="split the peers over this many wireguard-go interfaces (each takes 65,536)",
    )
    ap.add_argument("--measure", type=float, default=125.0)
    ap.add_argument("--pyspy", type=float, default=120.0)
    # Past the first drift-repair pass (60 s after the first pass), which reads the
    # interface back to check the agent's own apply: from then on nothing happens.
    ap.add_argument("--settle", type=float, default=75.0)
    ap.add_argument("--out", default="/var/tmp/idle")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--env", action="append", default=[], help="KEY=VALUE for the agent")
    ap.add_argument("--json", metavar="FILE", help="write the figures here")
    args = ap.parse_args()
    missing = missing_prerequisites()
    if missing:
        print("cannot run:", ", ".join(missing), file=sys.stderr)
        return 1
    with Lab() as lab, tempfile.TemporaryDirectory() as tmp:
        ns = lab.namespace("nai")
        devs = [lab.wireguard_go(ns, "wgi") for _ in range(args.interfaces)]
        dev = devs[0]  # the one whose snapshot changes and which is restarted
        feed, config = Path(tmp, "feed.json"), Path(tmp, "config.yaml")
        every = list(make_peers(args.peers).items())
        split = {
            d.name: dict(every[i :: args.interfaces]) for i, d in enumerate(devs)
        }  # fmt: skip
        peers = split[dev.name]
        write_atomic(feed, interfaces_document(split, "v1"))
        config.write_text(
            "node: {name: bench-01}\n"
            "wireguard:\n  interfaces:\n"
            + "".join(
                f"    - name: {d.name}\n      backend: userspace\n"
                f"      uapi_socket: {d.socket_path}\n"
                for d in devs
            )
            + f"feed: {{path: {feed}}}\n"
            "load: {interfaces: [lo], capacity: 1Gbit, sample_interval: 1s, window: 60s}\n"
            # Served, as on a real server: the HTTP serving process is measured too.
            "http: {listen: ['127.0.0.1:9586']}\n"
        )
        env = {"PYTHONPATH": str(ROOT), **dict(e.split("=", 1) for e in args.env)}
        proc = ns.popen([sys.executable, "-m", "nodeagent", "run", "-c", str(config)], env=env)
        assert proc.stdout is not None
        noticed = LogWatch(proc.stdout, "interface_changed")
        try:
            # Its log says nothing of how far an apply got: wait on the interface.
            # wireguard-go takes at most 65,536 peers; the agent holds the rest back.
            on_iface = min(len(peers), 1 << 16)
            t_apply = max(wait_full(d.socket_path, on_iface, proc) for d in devs)
            print(
                f"first pass: {on_iface} of {len(peers)} peers on each of {len(devs)} "
                f"interface(s) after {t_apply:.1f} s"
            )
            time.sleep(args.settle)
            pid = proc.pid
            parts0, w0 = cpu_parts(pid), time.monotonic()
            rss: list[int] = []
            while time.monotonic() - w0 < args.measure:
                time.sleep(1.0)
                rss.append(resident_kb(pid))
            parts1, w1 = cpu_parts(pid), time.monotonic()
            c0, c1 = sum(parts0.values()), sum(parts1.values())
            end_rss = resident_kb(pid)
            served = served_kb(pid)
            cpu = 100 * (c1 - c0) / (w1 - w0)
            rss.sort()
            print(
                f"idle CPU over {w1 - w0:.0f} s: {100 * (c1 - c0) / (w1 - w0):.2f} % of a core; "
                f"resident min/median/max {rss[0] / 1024:.0f}/{rss[len(rss) // 2] / 1024:.0f}/"
                f"{rss[-1] / 1024:.0f} MB (sampled each second; the serving process's own "
                f"{served / 1024:.1f} MB included), VmHWM {status_kb(pid, 'VmHWM') / 1024:.0f} MB"
            )
            split_cpu = {k: 100 * (parts1[k] - parts0[k]) / (w1 - w0) for k in parts0}
            print("  of which " + ", ".join(f"{k} {v:.2f} %" for k, v in split_cpu.items()))
            if args.pyspy > 0 and shutil.which("py-spy"):
                raw = Path(args.out + ".txt")
                subprocess.run(
                    ["py-spy", "record", "-p", str(pid), "-d", str(int(args.pyspy)), "-r", "100",
                     "--nonblocking", "--format", "raw", "-o", str(raw)],
                    check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
                summarize(raw, args.top)
            time.sleep(2.0)
            peak = snapshot_peak(pid, feed, split, dev.name, dev.socket_path)
            print(
                f"new full snapshot of {args.peers} peers: VmHWM {peak / 1024:.0f} MB, "
                f"{peak / end_rss:.2f}x the resident {end_rss / 1024:.0f} MB"
            )
            first, back, seen = repopulation_seconds(dev, on_iface, proc, noticed)
            print(
                f"wireguard-go restarted: noticed by the agent after {seen:.2f} s, the first "
                f"peer back after {first:.2f} s, every peer after {back:.2f} s"
            )
            # The agent is stopped first: it would repopulate the fresh interface itself.
            stop_agent(proc)
            n_ref, ref = setconf_seconds(dev, dev.socket_path)
            print(f"reference: wg setconf of those {n_ref} peers into a fresh one: {ref:.2f} s")
            figures = {
                "peers": args.peers,
                "interfaces": args.interfaces,
                "on_interface": on_iface,
                "idle_cpu_percent": round(cpu, 3),
                "idle_cpu_parts": {k: round(v, 3) for k, v in split_cpu.items()},
                "resident_mb": round(end_rss / 1024, 1),
                "snapshot_peak_mb": round(peak / 1024, 1),
                "repopulate_first_s": round(first, 2),
                "repopulate_noticed_s": round(seen, 2),
                "repopulate_s": round(back, 2),
                "setconf_s": round(ref, 2),
            }
            if args.json:
                Path(args.json).write_text(json.dumps(figures))
        finally:
            stop_agent(proc)
    return 0


def stop_agent(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def snapshot_peak(
    pid: int, feed: Path, split: dict[str, dict[bytes, Peer]], name: str, sock: str
) -> int:
    """VmHWM (kB) of ``pid`` while it takes a new full snapshot with 100 peers of ``name``
    out and 100 in (the other interfaces' peers the same)."""
    peers = split[name]
    keys = list(peers)
    changed = {k: peers[k] for k in keys[100:]}
    fresh = make_peers(100, tag="fresh", v4_base=11, v6_base="fd00:9")
    changed.update(fresh)
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS
    write_atomic(feed, interfaces_document({**split, name: changed}, "v2"))
    probe = next(iter(fresh)).hex()
    started = time.monotonic()
    while time.monotonic() - started < 600:
        time.sleep(0.5)
        if f"public_key={probe}" in exchange(sock, b"get=1\n\n"):
            return status_kb(pid, "VmHWM") + served_kb(pid)
    raise SystemExit("the new snapshot was not applied in time")


class LogWatch:
    """Drains the agent's output in a thread (it logs to stderr), noting when lines say ``words``.

    The agent's log lines carry no time; the time each one arrived is taken here.
    """

    def __init__(self, stream: IO[str], *words: str) -> None:
        self._stream, self._words = stream, words
        self.seen: list[float] = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        for line in self._stream:
            if all(w in line for w in self._words):
                self.seen.append(time.monotonic())

    def first_after(self, t: float) -> float | None:
        """Seconds from ``t`` to the first such line after it, if any came."""
        return next((s - t for s in self.seen if s >= t), None)


def repopulation_seconds(
    dev: WireguardGo, n: int, proc: subprocess.Popen[str], noticed: LogWatch
) -> tuple[float, float, float]:
    """Seconds from a restarted wireguard-go's start to its first peer back, to all ``n``,
    and to the agent's first ``interface_changed`` line since the stop (0 if that came
    before the start: the agent saw the daemon gone, and its pass found the new one)."""
    stopping = time.monotonic()
    dev.stop()
    started = time.monotonic()
    dev.start()
    first: float | None = None
    while time.monotonic() - started < 600:
        if proc.poll() is not None:
            raise SystemExit("agent exited")
        with contextlib.suppress(OSError):
            count = exchange(dev.socket_path, b"get=1\n\n").count("public_key=")
            if count and first is None:
                first = time.monotonic() - started
            if count >= n:
                back = time.monotonic() - started
                seen = noticed.first_after(stopping)
                if seen is None:
                    raise SystemExit("the agent did not log that the interface changed")
                return first or 0.0, back, max(seen - (started - stopping), 0.0)
        time.sleep(0.1)
    raise SystemExit("the restarted interface was not repopulated in time")


def setconf_seconds(dev: WireguardGo, sock: str) -> tuple[int, float]:
    """The reference: the interface's peers, as they are now, by ``wg setconf`` into a fresh one."""
    conf = "".join(
        f"[Peer]\nPublicKey = {format_key(p.public_key)}\n"
        + (f"PresharedKey = {format_key(p.preshared_key)}\n" if p.preshared_key else "")
        + f"AllowedIPs = {', '.join(str(ip) for ip in p.allowed_ips)}\n"
        for p in UapiBackend(dev.name, sock).read().peers.values()
    )
    dev.stop()
    dev.start()
    with tempfile.NamedTemporaryFile("w", dir="/var/tmp", suffix=".conf") as f:
        f.write(conf)
        f.flush()
        started = time.monotonic()
        subprocess.run(dev.namespace.argv(["wg", "setconf", dev.name, f.name]), check=True)
        return conf.count("[Peer]"), time.monotonic() - started


def wait_full(socket_path: str, n: int, proc: subprocess.Popen[str]) -> float:
    """Seconds until the interface holds ``n`` peers (counted from wireguard-go's reply)."""
    started = time.monotonic()
    while time.monotonic() - started < 900:
        if proc.poll() is not None:
            raise SystemExit("agent exited before applying")
        reply = exchange(socket_path, b"get=1\n\n")
        if reply.count("public_key=") >= n:
            return time.monotonic() - started
        time.sleep(2.0)
    raise SystemExit("agent did not apply in time")


if __name__ == "__main__":
    raise SystemExit(main())
