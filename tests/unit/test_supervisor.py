"""The supervisor restarts a failed service with backoff; the reload plan is a pure diff."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import generate_latest

from nodeagent.core.backoff import Backoff, Retries
from nodeagent.daemon.agent import Agent
from nodeagent.daemon.reload import Settings, plan_reload
from nodeagent.daemon.service import Failed, Supervisor, TaskService
from nodeagent.load.sampler import LoadSampler
from tests.peerdata import make_peers
from tests.unit.test_agent import Harness, feed_doc, until

FAST = Backoff(base=0.01, cap=0.05)


class Flaky(TaskService):
    """Ends by itself ``fails`` times (raising), then runs until stopped."""

    def __init__(self, fails: int, *, start_fails: int = 0) -> None:
        super().__init__("flaky")
        self.fails = fails
        self.start_fails = start_fails
        self.starts = 0
        self.stops = 0

    async def start(self, failed: Failed) -> None:
        self.starts += 1
        if self.start_fails:
            self.start_fails -= 1
            raise OSError("cannot start")
        await super().start(failed)

    async def stop(self) -> None:
        self.stops += 1
        await super().stop()

    def work(self) -> Coroutine[Any, Any, None]:
        return self._work()

    async def _work(self) -> None:
        await asyncio.sleep(0)
        if self.fails:
            self.fails -= 1
            raise RuntimeError("secret text 10.1.2.3")
        await asyncio.Event().wait()


class Steady(TaskService):
    def __init__(self) -> None:
        super().__init__("steady")
        self.started = 0

    def work(self) -> Coroutine[Any, Any, None]:
        self.started += 1
        return asyncio.Event().wait()


async def test_a_failed_service_is_restarted_and_the_others_go_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    changes: list[frozenset[str]] = []
    restarted: list[str] = []
    sup = Supervisor(
        backoff=FAST, on_change=lambda: changes.append(sup.degraded), on_restart=restarted.append
    )
    flaky, steady = Flaky(fails=3), Steady()
    await sup.start(steady)
    await sup.start(flaky)
    await until(lambda: flaky.starts == 4 and not sup.degraded)
    assert sup.restarts["flaky"] == 3 and restarted == ["flaky"] * 3
    assert steady.running and steady.started == 1
    assert frozenset({"flaky"}) in changes and changes[-1] == frozenset()
    text = caplog.text
    assert "service_failed service=flaky error=RuntimeError" in text
    assert "10.1.2.3" not in text and "secret" not in text
    await sup.stop_all()
    assert not steady.running and not flaky.running


async def test_a_restart_that_fails_to_start_is_tried_again() -> None:
    sup = Supervisor(backoff=FAST)
    flaky = Flaky(fails=1)
    await sup.start(flaky)
    flaky.start_fails = 2
    await until(lambda: flaky.starts == 4 and flaky.running and not sup.degraded)
    assert flaky.starts == 4 and sup.restarts["flaky"] == 3
    await sup.stop_all()


async def test_stop_calls_off_a_pending_restart() -> None:
    sup = Supervisor(backoff=Backoff(base=30.0, cap=30.0))
    flaky = Flaky(fails=1)
    await sup.start(flaky)
    await until(lambda: bool(sup.degraded))
    await sup.stop_all()
    assert flaky.starts == 1 and sup.degraded == frozenset()


def test_backoff_doubles_to_its_cap_with_equal_jitter() -> None:
    b = Backoff(base=1.0, cap=8.0)
    assert [b.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 8.0, 8.0]
    assert b.delay(3, 0.0) == 2.0 and b.delay(3, 0.5) == 3.0
    r = Retries(b, rnd=lambda: 1.0)
    assert [r.failed(), r.failed(), r.failed()] == [1.0, 2.0, 4.0]
    r.succeeded()
    assert r.failed() == 1.0


# -- the reload plan ------------------------------------------------------------------


def settings(tmp_path: Path, **changes: object) -> Settings:
    h = Harness(tmp_path)
    config = dataclasses.replace(h.config(), **changes)  # type: ignore[arg-type]
    return Settings(config, None, None)


def test_an_unchanged_configuration_replaces_nothing(tmp_path: Path) -> None:
    old = settings(tmp_path)
    plan = plan_reload(old, old)
    assert plan.replaced == [] and plan.interfaces == frozenset()
    assert plan.log is None and plan.node_name is None and not plan.privacy


def test_the_plan_names_what_changed(tmp_path: Path) -> None:
    old = settings(tmp_path)
    c = old.config
    iface = dataclasses.replace(c.wireguard.interfaces[0], uapi_socket="/run/other.sock")
    new = settings(
        tmp_path,
        node_name="other-01",
        log=dataclasses.replace(c.log, level="info"),
        feed=dataclasses.replace(c.feed, long_poll=9.0),
        wireguard=dataclasses.replace(c.wireguard, interfaces=(iface,)),
        privacy=dataclasses.replace(c.privacy, scrub_interval=1.0),
    )
    plan = plan_reload(old, new)
    assert plan.node_name == "other-01" and plan.log == new.config.log
    assert plan.replaced == ["feed"] and plan.privacy
    assert plan.interfaces == frozenset({"wgu0"})
    gone = settings(tmp_path, wireguard=dataclasses.replace(c.wireguard, interfaces=()))
    assert plan_reload(old, gone).interfaces == frozenset({"wgu0"})


# -- inside the agent -------------------------------------------------------------------


async def test_a_failing_load_sampler_degrades_the_agent_which_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = Harness(tmp_path)
    text = h.config_path.read_text().replace(
        "log:", "load:\n  interfaces: [lo]\n  capacity: 1Gbit\n  sample_interval: 50ms\nlog:"
    )
    h.config_path.write_text(text)
    h.feed.write_text(feed_doc(make_peers(5)))
    failures = [1]
    real_run = LoadSampler.run

    async def run(self: LoadSampler) -> None:
        if failures:
            failures.pop()
            raise RuntimeError("sampler bug")
        await real_run(self)

    monkeypatch.setattr(LoadSampler, "run", run)
    agent = Agent(h.config(), backend_factory=h.factory, restart_backoff=Backoff(0.3, 0.3))

    def problems() -> list[str]:
        # A document lists problems only while degraded: none at all once "ok".
        listed: list[str] = json.loads(agent.board.body).get("problems", [])
        return listed

    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: "service_restarting" in problems())
        metrics = generate_latest(agent.registry).decode()
        assert 'nodeagent_service_up{service="load"} 0.0' in metrics
        # The rest of the agent goes on meanwhile.
        await until(lambda: h.fake.peers == make_peers(5))
        await until(lambda: agent.sampler is not None and agent.sampler.last_sample_at is not None)
        await until(lambda: "service_restarting" not in problems())
        metrics = generate_latest(agent.registry).decode()
        assert 'nodeagent_service_restarts_total{service="load"} 1.0' in metrics
        assert 'nodeagent_service_up{service="load"} 1.0' in metrics
        assert not task.done() and not agent.failed
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 10)
