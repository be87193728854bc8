"""`nodeagent lab` / `make demo`: the whole system on this machine, in network namespaces.

Three VPN servers (two wireguard-go, one OpenVPN 2.6), each in its namespace
with its own agent; customers in namespaces of their own with real tunnels
and iperf3 traffic at different rates; the reference feed server serving
every agent's feed and the reference collector taking every agent's signed
pushes, its public status page on 127.0.0.1 (``lab.system`` has the map).
While it runs the demo changes the feed: a customer signs up, another's
account expires. The terminal shows each server's load as the collector
does, redrawn in place (plain lines when stdout is not a terminal).

Runs until Ctrl+C (or SIGTERM), or ``--duration`` seconds; everything it made
is removed in every case. Exit status 0 after a run (ended by time or by a
signal), 1 when it could not run, 128+N for signal N during the setup.
Needs root and: ip, wireguard-go, wg, ping, openvpn, openssl, iperf3.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TextIO

from nodeagent.lab import interrupts
from nodeagent.lab.console import Console
from nodeagent.lab.interrupts import Interrupted
from nodeagent.lab.netns import LabError, missing_tools
from nodeagent.lab.summary import Event, Snapshot, figures_from_api
from nodeagent.lab.system import SERVERS, Customer, System, build_network, start_iperf
from nodeagent.lab.system import start_processes as start_system
from nodeagent.lab.tunnel import Lab

TOOLS = ("ip", "wireguard-go", "wg", "ping", "openvpn", "openssl", "iperf3")
EXPIRES_IN = 3  # seconds between the feed's change and the account's expiry
# When the feed changes: a share of --duration, or seconds into a run without one.
WHEN = {"join": (0.25, 20.0), "expire": (0.5, 40.0)}


def prerequisites() -> list[str]:
    """What this host lacks (empty when the demo can run), each with its Debian package."""
    missing = [] if os.geteuid() == 0 else ["root (network namespaces need CAP_NET_ADMIN)"]
    missing += missing_tools(TOOLS)
    if not os.path.exists("/dev/net/tun"):
        missing.append("/dev/net/tun")
    return missing


def fetch_servers(url: str) -> object:
    """The collector's ``/api/v1/servers`` document, or None while it does not answer."""
    try:
        with urllib.request.urlopen(url + "api/v1/servers", timeout=2) as r:  # noqa: S310 (http://127.0.0.1)
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


def _wait(what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise LabError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.3)


@dataclass
class Story:
    """What the demo does to the feed while it runs, and what it has seen happen."""

    system: System
    duration: float | None
    events: list[Event] = field(default_factory=list)
    joiner: Customer | None = None  # signed up, tunnel not seen yet
    leaver: Customer | None = None  # expiring, tunnel not seen gone yet
    done: set[str] = field(default_factory=set)

    def at(self, step: str) -> float:
        share, seconds = WHEN[step]
        return share * self.duration if self.duration else seconds

    def note(self, elapsed: float, text: str, console: Console) -> None:
        self.events.append(Event(elapsed, text))
        console.event(self.events[-1])

    def step(self, elapsed: float, console: Console) -> None:
        system = self.system
        if "join" not in self.done and elapsed >= self.at("join"):
            self.done.add("join")
            self.joiner = next(c for c in system.customers if not c.account.listed)
            self.joiner.account.listed = True
            system.publish()
            self.note(elapsed, f"feed: a new customer signs up on {self.joiner.spec.name}", console)
        if "expire" not in self.done and elapsed >= self.at("expire"):
            self.done.add("expire")
            self.leaver = system.servers[0].customers[0]
            soon = datetime.now(UTC) + timedelta(seconds=EXPIRES_IN)
            self.leaver.account.expires_at = soon
            system.publish()
            where = self.leaver.spec.name
            self.note(
                elapsed, f"feed: a customer's account on {where} ends in {EXPIRES_IN}s", console
            )
        if self.joiner is not None and self.joiner.tunnel_up():
            c, self.joiner = self.joiner, None
            start_iperf(system, c, self.remaining(elapsed))
            self.note(
                elapsed, f"{c.spec.name}: the agent added the peer, iperf3 {c.rate}bit/s", console
            )
        if self.leaver is not None and not self.leaver.tunnel_up():
            c, self.leaver = self.leaver, None
            if c.iperf is not None:
                system.lab.stop(c.iperf)
            self.note(
                elapsed, f"{c.spec.name}: the agent removed the expired peer on time", console
            )

    def remaining(self, elapsed: float) -> float | None:
        return None if self.duration is None else self.duration - elapsed + 5


def _setup(lab: Lab, tmp: Path, port: int, duration: float | None, console: Console) -> Story:
    n = sum(len(s.rates) for s in SERVERS)
    console.say(f"building {len(SERVERS)} VPN servers and {n} customers, each in its namespace")
    system = build_network(lab, tmp, port)
    story = Story(system, duration)
    console.say("starting the feed server, the collector, OpenVPN and one agent per server")
    start_system(system)
    _wait("the collector's status page", lambda: fetch_servers(system.url) is not None, 30)
    console.say(f"public status page: {system.url}  (open it in a browser)")
    waiting = [c for c in system.customers if c.account.listed]
    console.say(f"waiting for {len(waiting)} customers' tunnels (the agents apply the feed)")

    def tunnels() -> bool:
        for c in list(waiting):
            if c.tunnel_up():
                waiting.remove(c)
                how = (
                    "an OpenVPN customer logged in"
                    if c.account.username
                    else "a WireGuard customer's tunnel is up"
                )
                story.note(0.0, f"{c.spec.name}: {how}, iperf3 {c.rate}bit/s", console)
                start_iperf(system, c, story.remaining(0.0))
        return not waiting

    _wait("the customers' tunnels", tunnels, 90)
    return story


def _run(story: Story, console: Console) -> None:
    system, duration = story.system, story.duration
    kinds = {s.spec.name: s.spec.kind for s in system.servers}
    start = time.monotonic()
    while True:
        tick = time.monotonic()
        elapsed = tick - start
        story.step(elapsed, console)
        figures = figures_from_api(fetch_servers(system.url), kinds)
        final = duration is not None and elapsed >= duration
        snap = Snapshot(system.url, min(elapsed, duration or elapsed), duration, figures,
                        tuple(story.events))  # fmt: skip
        console.show(snap, final=final)
        if final:
            return
        time.sleep(max(1.0 - (time.monotonic() - tick), 0.05))


def _teardown(lab: Lab, tmp: Path | None, console: Console) -> None:
    while True:
        try:
            interrupts.disarm()  # from here on a signal cannot cut the teardown short
            console.say("tearing down: processes, wireguard-go, links, namespaces, files")
            try:
                lab.close()
            except LabError as e:
                console.say(f"teardown: {e}: {e.__cause__}")
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            return
        except Interrupted:
            continue  # the one signal landed before disarm(): start over (close is idempotent)


def run_demo(duration: float | None = None, port: int = 8600, out: TextIO = sys.stdout) -> int:
    """Run the demo (``port`` 0 or busy: any free one); returns the exit status."""
    missing = prerequisites()
    if missing:
        print("demo: cannot run here, missing: " + "; ".join(missing), file=sys.stderr)
        print("demo: `make deps-netns` installs the Debian packages", file=sys.stderr)
        return 1
    console = Console(out)
    lab, tmp, running = Lab(), None, False
    with interrupts.armed():
        try:
            with interrupts.held():
                tmp = Path(tempfile.mkdtemp(prefix="nodeagent-demo-"))
            story = _setup(lab, tmp, port, duration, console)
            running = True
            _run(story, console)
            return 0
        except Interrupted as e:
            console.say(f"{e}: stopping")
            return 0 if running else 128 + e.signum
        except (LabError, OSError) as e:
            console.say(f"demo failed: {e}")
            return 1
        finally:
            _teardown(lab, tmp, console)
