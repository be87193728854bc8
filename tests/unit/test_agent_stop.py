"""Stopping and reloading the agent while a backend call is in flight in a worker thread.

``systemctl stop`` and ``restart`` must end well within the unit's 20 s stop
timeout whatever a wedged wireguard-go or kernel does, and touch no peer on the
way out; a reload must never close a backend under the pass that is using it,
nor hand a closed one to the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from nodeagent.config.agent import WireguardInterfaceConfig, load_config
from nodeagent.core.model import DesiredState, Device, InterfaceSetup, Peer, Plan
from nodeagent.daemon.agent import Agent
from nodeagent.daemon.turns import TurnsStopped
from tests.fakes import FakeBackend
from tests.peerdata import feed_document, make_peers, write_atomic
from tests.unit.test_backend_close import SilentDaemon

ROOT = Path(__file__).resolve().parents[2]


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def test_stop_ends_a_uapi_call_the_daemon_never_answers() -> None:
    """The agent's first read hangs on a silent daemon; a stop still ends it, and the process.

    Run by ``asyncio.run`` as ``nodeagent run`` is, whose default-executor
    shutdown waits for every worker thread: a thread left in the call would
    keep it for the UAPI timeout (60 s), past systemd's 20 s.
    """
    # AF_UNIX paths are limited to 108 bytes; pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="na-", dir="/tmp") as tmp:
        run_against_a_silent_daemon(Path(tmp))


def run_against_a_silent_daemon(tmp: Path) -> None:
    daemon = SilentDaemon(tmp / "wgstop0.sock")
    feed = tmp / "feed.json"
    feed.write_text(feed_document(make_peers(3), "wgstop0"))
    config = tmp / "config.yaml"
    config.write_text(
        "node: {name: test-01}\n"
        "wireguard:\n  interfaces:\n"
        f"    - {{name: wgstop0, backend: userspace, uapi_socket: {daemon.path}}}\n"
        f"feed: {{path: {feed}}}\n"
    )

    async def scenario() -> None:
        agent = Agent(load_config(config))  # the real UapiBackend
        task = asyncio.create_task(agent.run())
        await until(daemon.requested.is_set)  # the first reconcile waits for a reply
        agent.request_stop()
        await asyncio.wait_for(task, 30)
        # The call in flight was ended by the stop, not by its own timeout.
        assert daemon.hung_up.is_set(), "run() returned with a UAPI call still in flight"
        assert not agent.failed

    # Not the verdict (the assertions are): a bound on how long a failure takes
    # to show, as asyncio.run would otherwise wait out the thread's 60 s.
    watchdog = threading.Timer(35, daemon.hang_up)
    watchdog.start()
    try:
        asyncio.run(scenario())
    finally:
        watchdog.cancel()
        daemon.close()
    # Nothing but reads on the way out: no peer was touched.
    assert daemon.requests and all(r == b"get=1" for r in daemon.requests)


class ScrubbedFake(FakeBackend):
    """A fake backend that the scrubber can use, which records misuse around close()."""

    def __init__(self, cfg: WireguardInterfaceConfig) -> None:
        super().__init__(cfg.name)
        self.cfg = cfg
        self.busy = 0
        self.closed = False
        self.closed_while_busy = False
        self.used_after_close = 0
        self.scrubs = 0
        self.hold: threading.Event | None = None  # set by the test: the next scrub waits on it
        self.held = threading.Event()  # a scrub is waiting on ``hold``

    def _use(self) -> None:
        if self.closed:
            self.used_after_close += 1

    def idle_peers(self, idle_after: float) -> list[Peer]:
        self._use()
        self.busy += 1
        try:
            hold, self.hold = self.hold, None
            if hold is not None:
                self.held.set()
                assert hold.wait(30)
            self.scrubs += 1
            return []
        finally:
            self.busy -= 1

    def readd(self, peers: Sequence[Peer]) -> None:
        self._use()

    def read(self) -> Device:
        self._use()
        return super().read()

    def apply(self, plan: Plan) -> None:
        self._use()
        super().apply(plan)

    def setup(self, setup: InterfaceSetup) -> None:
        self._use()
        super().setup(setup)

    def close(self) -> None:
        self.closed_while_busy = self.closed_while_busy or self.busy > 0
        self.closed = True


def two_interfaces(path: Path, feed: Path, socket_b: str = "/run/x/b.sock") -> None:
    path.write_text(
        "node: {name: test-01}\n"
        "wireguard:\n  resync_interval: 1h\n  interfaces:\n"
        "    - {name: wgsa0, backend: userspace, uapi_socket: /run/x/a.sock}\n"
        f"    - {{name: wgsb0, backend: userspace, uapi_socket: {socket_b}}}\n"
        f"feed: {{path: {feed}}}\n"
        "privacy: {scrub_interval: 100ms}\n"
    )


async def test_reload_closes_a_changed_backend_only_after_the_scrub_pass_using_it(
    tmp_path: Path,
) -> None:
    feed, config = tmp_path / "feed.json", tmp_path / "config.yaml"
    doc = json.loads(feed_document(make_peers(3), "wgsa0"))
    doc["wireguard"]["wgsb0"] = {"peers": []}
    feed.write_text(json.dumps(doc))
    two_interfaces(config, feed)
    made: list[ScrubbedFake] = []

    def factory(cfg: WireguardInterfaceConfig) -> ScrubbedFake:
        made.append(ScrubbedFake(cfg))
        return made[-1]

    agent = Agent(load_config(config), backend_factory=factory)
    task = asyncio.create_task(agent.run())
    release = threading.Event()
    try:
        await until(lambda: agent.state.syncs > 0)
        old_a, old_b = made
        old_a.hold = release
        await until(old_a.held.is_set)  # a scrub pass of wgsa0 is in the backend
        # Both interfaces change: wgsa0 is in use now, wgsb0 is next in that pass.
        config.write_text(
            config.read_text()
            .replace("/run/x/a.sock", "/run/x/a2.sock")
            .replace("/run/x/b.sock", "/run/x/b2.sock")
        )
        before = agent.state.reloads
        agent.request_reload()
        await until(lambda: agent.state.reloads > before)
        assert not old_a.closed, "a reload closed the backend under the scrub pass using it"
        release.set()
        await until(lambda: len(made) == 4 and all(b.scrubs > 0 for b in made[2:]))
        await until(lambda: made[2].peers == make_peers(3))
        await until(lambda: old_a.closed and old_b.closed)
        assert old_a.scrubs == 1
    finally:
        release.set()
        agent.request_stop()
        await asyncio.wait_for(task, 30)
    for b in (old_a, old_b):
        assert not b.closed_while_busy
        assert b.used_after_close == 0, f"{b.interface}: used after it was closed"
    new_a, new_b = made[2:]
    assert [new_a.cfg.uapi_socket, new_b.cfg.uapi_socket] == ["/run/x/a2.sock", "/run/x/b2.sock"]
    # The reconcile after the reload went to the new backends.
    assert new_a.peers == make_peers(3) and not old_a.applied[1:]


@pytest.mark.parametrize("in_flight", [False, True])
async def test_stop_closes_every_backend_once_no_pass_uses_it(
    tmp_path: Path, in_flight: bool
) -> None:
    """A pass still in the backend at stop has its grace; the backends close after it."""
    feed, config = tmp_path / "feed.json", tmp_path / "config.yaml"
    feed.write_text(feed_document(make_peers(3), "wgsa0"))
    two_interfaces(config, feed)
    made: list[ScrubbedFake] = []

    def factory(cfg: WireguardInterfaceConfig) -> ScrubbedFake:
        made.append(ScrubbedFake(cfg))
        return made[-1]

    agent = Agent(load_config(config), backend_factory=factory)
    task = asyncio.create_task(agent.run())
    release = threading.Event()
    try:
        await until(lambda: agent.state.syncs > 0)
        if in_flight:
            made[0].hold = release
            await until(made[0].held.is_set)
        agent.request_stop()
        if in_flight:
            await asyncio.sleep(0.3)  # within the pass's grace
            assert not any(b.closed for b in made), "closed under the pass in its grace"
        release.set()
        await asyncio.wait_for(task, 30)
    finally:
        release.set()
    assert all(b.closed and not b.closed_while_busy for b in made)
    assert all(b.used_after_close == 0 for b in made)


async def stop_with_a_reconcile_waiting(tmp: Path) -> None:
    """A scrub pass is in the backend and a reconcile waits for its turn when the stop comes.

    Run in a child process by the test below: with a thread left waiting for a
    turn that never comes, asyncio.run (its executor shutdown) never returns.
    """
    feed, config = tmp / "feed.json", tmp / "config.yaml"
    feed.write_text(feed_document(make_peers(3), "wgsa0"))
    two_interfaces(config, feed)
    made: list[ScrubbedFake] = []

    def factory(cfg: WireguardInterfaceConfig) -> ScrubbedFake:
        made.append(ScrubbedFake(cfg))
        return made[-1]

    agent = Agent(load_config(config), backend_factory=factory)
    task = asyncio.create_task(agent.run())
    release = threading.Event()
    try:
        await until(lambda: agent.state.syncs > 0)
        made[0].hold = release
        await until(made[0].held.is_set)
        write_atomic(feed, feed_document(make_peers(5), "wgsa0", "v2"))
        await until(lambda: agent.state.feed_version == "v2")
        await asyncio.sleep(0.3)  # the reconciler's pass of v2 waits for its turn
        agent.request_stop()
        await asyncio.sleep(0.3)
        release.set()  # the scrub pass ends within its grace
        await asyncio.wait_for(task, 20)
    finally:
        release.set()
    # The pass that was waiting never began: nothing touched the peers on the way out.
    assert made[0].peers == make_peers(3) and len(made[0].applied) == 1, "v2 applied at stop"
    assert all(b.closed and not b.closed_while_busy for b in made)
    assert not any(b.used_after_close for b in made)


def test_a_pass_waiting_for_its_turn_at_stop_never_begins_nor_strands(tmp_path: Path) -> None:
    code = (
        "import asyncio, sys; from pathlib import Path; "
        "from tests.unit.test_agent_stop import stop_with_a_reconcile_waiting as s; "
        "asyncio.run(s(Path(sys.argv[1])))"
    )
    try:
        done = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=45,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the agent's process did not exit: a thread waits for a turn forever")
    assert done.returncode == 0, done.stderr[-3000:]


@contextlib.asynccontextmanager
async def synced_agent(tmp: Path) -> AsyncIterator[Agent]:
    """An agent on two fake interfaces, after its first pass; stopped on the way out."""
    feed, config = tmp / "feed.json", tmp / "config.yaml"
    feed.write_text(feed_document(make_peers(3), "wgsa0"))
    two_interfaces(config, feed)
    agent = Agent(load_config(config), backend_factory=ScrubbedFake)
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.state.syncs > 0)
        yield agent
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 30)


async def test_a_stop_that_meets_a_wake_up_still_ends_the_passes(tmp_path: Path) -> None:
    """A new feed arriving in the very step the stop cancels the reconciler: the stop wins.

    (``asyncio.wait_for`` on Python 3.11 returns the event instead of raising the
    cancellation when both are ready at once: the loop went on passing and
    retrying, and the stop gave up on it after its timeout.) A pass the wake-up
    began may still be in its worker thread; in the agent the stop turns it away.
    """
    async with synced_agent(tmp_path) as agent:
        reconciler = agent.reconciler
        assert reconciler.desired is not None
        work = reconciler._task
        assert work is not None
        reconciler.offer(reconciler.desired)
        await reconciler.stop()
        assert work.done(), "the reconciler's loop went on after its stop"


async def test_a_pass_the_stop_turns_away_is_no_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Woken between the stop closing the turns and cancelling it: no error, count or retry."""
    async with synced_agent(tmp_path) as agent:
        reconciler = agent.reconciler
        assert reconciler.desired is not None
        turned_away: list[DesiredState] = []
        once = reconciler._reconcile_once

        def recorded(desired: DesiredState) -> None:
            try:
                once(desired)
            except TurnsStopped:
                turned_away.append(desired)
                raise

        monkeypatch.setattr(reconciler, "_reconcile_once", recorded)
        agent.interfaces.turns.stop()
        for n in (1, 2):  # the second pass begins only once the loop took the first's end
            reconciler.offer(reconciler.desired)
            await until(lambda: len(turned_away) == n)  # noqa: B023 (awaited here)
        assert reconciler.errors == 0 and not reconciler.last_pass_failed
        assert "peer_sync failed" not in caplog.text
