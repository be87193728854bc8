"""The agent with an OpenVPN instance: feed users reach the logins, status and metrics, reload."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from prometheus_client import generate_latest

from nodeagent.config.agent import load_config
from nodeagent.daemon.agent import Agent
from tests.fakes import FakeBackend
from tests.peerdata import write_atomic
from tests.unit.test_openvpn_auth import make_hash
from tests.unit.test_openvpn_instance import PASSWORD, FakeOpenVPN, until


def feed(version: str, users: dict[str, bytes]) -> str:
    entries = [{"username": n, "password_hash": make_hash(p)} for n, p in users.items()]
    return json.dumps(
        {
            "version": version,
            "full": True,
            "wireguard": {"wgu0": {"peers": []}},
            "openvpn": {"users": entries},
        }
    )


def config(tmp_path: Path, sock: str) -> Path:
    pw = tmp_path / "mgmt.pw"
    pw.write_bytes(PASSWORD + b"\n")
    pw.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(
        "node: {name: t1}\n"
        "wireguard:\n  interfaces:\n    - {name: wgu0, backend: userspace}\n"
        f"feed: {{path: {tmp_path}/feed.json}}\n"
        "openvpn:\n  instances:\n"
        f"    - {{management: {sock}, password_file: {pw}, interface: tun7}}\n"
        "log: {level: debug}\n"
    )
    return path


async def test_agent_authenticates_feed_users_and_reports_the_instance(tmp_path: Path) -> None:
    fake = FakeOpenVPN(tmp_path / "m.sock")
    await fake.start()
    write_atomic(tmp_path / "feed.json", feed("v1", {"u1": b"one", "u2": b"two"}))
    agent = Agent(
        load_config(config(tmp_path, fake.path)), backend_factory=lambda cfg: FakeBackend(cfg.name)
    )
    task = asyncio.create_task(agent.run())
    try:
        await until(lambda: agent.openvpn.up == {"tun7": True})
        await until(lambda: agent.state.feed_version == "v1")
        fake.login(1, "u1", "one")
        fake.login(2, "u2", "nope")
        await until(lambda: "client-auth-nt 1 0" in fake.commands)
        await until(lambda: any(c.startswith("client-deny 2 0") for c in fake.commands))
        write_atomic(tmp_path / "feed.json", feed("v2", {"u2": b"two"}))
        await until(lambda: "client-kill 1 HALT" in fake.commands)
        text = generate_latest(agent.registry).decode()
        assert 'nodeagent_openvpn_up{interface="tun7"} 1.0' in text
        assert "nodeagent_openvpn_logins_accepted_total 1.0" in text
        assert "nodeagent_openvpn_logins_refused_total 1.0" in text
        assert "u1" not in text and "u2" not in text
        await fake.stop()
        await until(lambda: "openvpn_unreachable" in agent.board.body.decode())
        # A reload without the instance lets it go.
        Path(agent.config.path).write_text(
            Path(agent.config.path).read_text().split("openvpn:")[0] + "log: {level: debug}\n"
        )
        agent.request_reload()
        await until(lambda: agent.openvpn.up == {})
        await until(lambda: "openvpn_unreachable" not in agent.board.body.decode())
    finally:
        agent.request_stop()
        await asyncio.wait_for(task, 10)
