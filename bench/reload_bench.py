"""What a reload costs the HTTP endpoints: requests lost while ``systemctl reload`` runs (root).

    python bench/reload_bench.py [--connections 50] [--seconds 10] [--every 0.25]

The real daemon (``python -m nodeagent run``, a wireguard-go interface in a
lab namespace, a file feed, HTTP on 127.0.0.1 with a bearer token) serves
``wrk`` on ``/healthz`` while a driver rewrites the configuration and sends
SIGHUP every ``--every`` seconds. Two runs, side by side:

- **token rotation**: each reload brings a new token file content; the
  running server takes it (listeners and connections kept);
- **listen change**: each reload adds or drops a second address (``[::1]``,
  same port), so the server is rebuilt and the first address is bound anew.

Printed per run: reloads the daemon logged, requests, socket errors
(connection refused or reset, as wrk counts them). A benchmark, not a test:
it exits non-zero only if the daemon died or logged no reload.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.status_bench import DaemonLog, start_daemon, stop_daemon, wait_for_load, wrk
from nodeagent.lab.netns import missing_prerequisites
from nodeagent.lab.tunnel import Lab
from nodeagent.lab.wireguard_go import WireguardGo
from tests.peerdata import feed_document, make_peers, write_atomic


def write_config(tmp: Path, wg: WireguardGo, port: int, *, second_address: bool) -> Path:
    listen = [f"127.0.0.1:{port}"] + ([f"[::1]:{port}"] if second_address else [])
    config = tmp / "config.yaml"
    write_atomic(
        config,
        f"node: {{name: bench-01}}\n"
        f"wireguard:\n  interfaces:\n"
        f"    - {{name: {wg.name}, backend: userspace, uapi_socket: {wg.socket_path}}}\n"
        f"feed: {{path: {tmp / 'feed.json'}}}\n"
        f"http: {{listen: {listen!r}, token_file: {tmp / 'http.token'}}}\n"
        f"log: {{level: info}}\n",
    )
    return config


def write_token(tmp: Path, turn: int) -> None:
    """A new token, replaced in one rename, never readable by others (or the agent refuses it)."""
    part = tmp / "http.token.tmp"
    part.write_text(f"bench-token-{turn:08d}\n")
    part.chmod(0o600)
    os.replace(part, tmp / "http.token")


class Reloader(threading.Thread):
    """Changes the configuration and sends SIGHUP every ``every`` seconds until stopped."""

    def __init__(self, pid: int, every: float, change: Callable[[int], object]) -> None:
        super().__init__(name="reloader", daemon=True)
        self.pid, self.every, self.change = pid, every, change
        self.sent = 0
        self._stopping = threading.Event()

    def run(self) -> None:
        while not self._stopping.wait(self.every):
            self.sent += 1
            self.change(self.sent)
            os.kill(self.pid, signal.SIGHUP)

    def stop(self) -> int:
        self._stopping.set()
        self.join()
        return self.sent


def reloads_logged(log: Path) -> int:
    return log.read_text(errors="replace").count("config_reload done")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--every", type=float, default=0.25)
    ap.add_argument("--port", type=int, default=19587)
    args = ap.parse_args()
    if missing := missing_prerequisites():
        print("cannot run:", ", ".join(missing), file=sys.stderr)
        return 1

    url = f"http://127.0.0.1:{args.port}/healthz"
    results: list[tuple[str, int, int, dict[str, float]]] = []
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="reload-bench-") as tmp_name:
        tmp = Path(tmp_name)
        wg = lab.wireguard_go(lab.namespace("nar"), "wgrb")
        write_atomic(tmp / "feed.json", feed_document(make_peers(10), wg.name, "v1"))
        write_token(tmp, 0)
        config = write_config(tmp, wg, args.port, second_address=False)
        argv = [sys.executable, "-m", "nodeagent", "run", "-c", str(config)]
        log = DaemonLog(tmp / "agent.log")
        log.path.touch()
        agent = start_daemon(argv, log.path)
        try:
            wait_for_load(agent, log, 10)
            runs: tuple[tuple[str, Callable[[int], object]], ...] = (
                ("token rotation", lambda turn: write_token(tmp, turn)),
                (
                    "listen change",
                    lambda turn: write_config(tmp, wg, args.port, second_address=turn % 2 == 1),
                ),
            )
            for label, change in runs:
                before = reloads_logged(log.path)
                reloader = Reloader(agent.pid, args.every, change)
                reloader.start()
                try:
                    result = wrk(url, args.connections, args.seconds)
                finally:
                    sent = reloader.stop()
                time.sleep(1.0)  # the last reload is logged
                results.append((label, sent, reloads_logged(log.path) - before, result))
                if agent.poll() is not None:
                    raise SystemExit(f"the daemon exited:\n{log.tail()}")
        finally:
            stop_daemon(agent)

    print(f"# agent: {shlex.join(argv)}")
    print(
        f"# wrk on /healthz, {args.connections} connections, {args.seconds} s per run; "
        f"SIGHUP every {args.every:g} s"
    )
    print(f"{'':16} {'SIGHUPs':>8} {'reloads':>8} {'requests':>9} {'socket errors':>14}")
    for label, sent, applied, r in results:
        print(f"{label:16} {sent:8d} {applied:8d} {r['requests']:9.0f} {r['socket_errors']:14.0f}")
    return 0 if all(applied for _, _, applied, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
