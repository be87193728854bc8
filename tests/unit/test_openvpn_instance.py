"""The management client, an instance and the service against a scripted OpenVPN (unix socket).

:class:`FakeOpenVPN` speaks the server's side as OpenVPN 2.6 does: the
password prompt without a newline, ``>INFO`` greeting, ``>HOLD``, one reply
per command line, and ``>CLIENT:`` blocks the test writes. It records every
command, so a test can check what was (and was not) sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from nodeagent.config.model import OpenVPNInstanceConfig
from nodeagent.core.backoff import Backoff
from nodeagent.core.model import User
from nodeagent.daemon.openvpn import OpenVPNService
from nodeagent.openvpn.auth import Authenticator
from nodeagent.openvpn.client import ManagementError, connect
from nodeagent.openvpn.instance import DENY_REASON, Hooks, Instance
from tests.unit.test_openvpn_auth import make_hash

PASSWORD = b"mgmt-secret"


class FakeOpenVPN:
    def __init__(self, path: Path, password: bytes | None = PASSWORD, hold: bool = True) -> None:
        self.path = str(path)
        self.password = password
        self.hold = hold
        self.commands: list[str] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.connections = 0
        self.answer: Callable[[str], bytes] = self.default_answer
        self.server: asyncio.Server | None = None

    def default_answer(self, line: str) -> bytes:
        if line.startswith("kill "):
            return b"ERROR: common name not found\r\n"
        return b"SUCCESS: ok\r\n"

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._client, self.path)

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()
        self.writers.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            if self.password is not None:
                writer.write(b"ENTER PASSWORD:")
                if (await reader.readline()).rstrip(b"\n") != self.password:
                    writer.write(b"ERROR: bad password\r\n")
                    writer.close()
                    return
                writer.write(b"SUCCESS: password is correct\r\n")
            writer.write(b">INFO:OpenVPN Management Interface Version 5 -- type 'help'\r\n")
            if self.hold:
                writer.write(b">HOLD:Waiting for hold release:0\r\n")
            while line := await reader.readline():
                text = line.decode().rstrip("\n")
                self.commands.append(text)
                writer.write(self.answer(text))
        except (ConnectionError, OSError):
            pass

    def send(self, data: bytes) -> None:
        self.writers[-1].write(data)

    def login(self, cid: int, username: str, password: str, kid: int = 0) -> None:
        self.send(
            f">CLIENT:CONNECT,{cid},{kid}\r\n>CLIENT:ENV,untrusted_ip=198.51.100.9\r\n"
            f">CLIENT:ENV,username={username}\r\n>CLIENT:ENV,password={password}\r\n"
            ">CLIENT:ENV,END\r\n".encode()
        )


async def until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake(tmp_path: Path) -> AsyncIterator[FakeOpenVPN]:
    f = FakeOpenVPN(tmp_path / "mgmt.sock")
    await f.start()
    yield f
    with contextlib.suppress(Exception):
        await f.stop()


def pwfile(tmp_path: Path, mode: int = 0o600) -> str:
    p = tmp_path / "mgmt.pw"
    p.write_bytes(PASSWORD + b"\n")
    p.chmod(mode)
    return str(p)


async def test_connect_logs_in_and_matches_replies(fake: FakeOpenVPN) -> None:
    events: list[object] = []
    conn = await connect(fake.path, PASSWORD, events.append)
    try:
        reply = await conn.command("hold", "release")
        assert reply.ok and fake.commands == ["hold release"]
    finally:
        await conn.wait_closed()
    with pytest.raises(ManagementError) as e:
        await connect(fake.path, b"wrong", events.append)
    assert e.value.reason == "password_refused"
    with pytest.raises(ManagementError) as e:
        await connect(fake.path, None, events.append)
    assert e.value.reason == "password_required"
    with pytest.raises(ManagementError) as e:
        await connect(fake.path + ".nope", None, events.append)
    assert e.value.reason == "no_socket"


async def test_command_without_reply_breaks_the_connection(fake: FakeOpenVPN) -> None:
    fake.answer = lambda line: b"" if line == "hang" else b"SUCCESS: ok\r\n"
    conn = await connect(fake.path, PASSWORD, lambda e: None, command_timeout=0.2)
    with pytest.raises(ManagementError) as e:
        await conn.command("hang")
    assert e.value.reason == "timeout"
    await until(lambda: conn.closed.done())


def instance(
    fake: FakeOpenVPN, tmp_path: Path, users: dict[str, User], **hooks: object
) -> Instance:
    auth = Authenticator()
    auth.set_users(users)
    cfg = OpenVPNInstanceConfig(fake.path, "tun0", pwfile(tmp_path))
    return Instance(cfg, auth, Hooks(**hooks), backoff=Backoff(0.05, 0.1))  # type: ignore[arg-type]


async def test_instance_authenticates_releases_hold_and_ends_sessions(
    fake: FakeOpenVPN, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="nodeagent")
    outcomes: list[str] = []
    ended: list[int] = []
    users = {"u1": User("u1", make_hash(b"good")), "u2": User("u2", make_hash(b"two"))}
    inst = instance(fake, tmp_path, users, auth=outcomes.append, ended=ended.append)
    task = asyncio.create_task(inst.run())
    try:
        await until(lambda: "hold release" in fake.commands)
        fake.login(1, "u1", "good", kid=3)
        fake.login(2, "u1", "bad")
        fake.login(3, "ghost", "good")
        fake.login(4, "u2", "two")
        await until(lambda: len(outcomes) == 4)
        assert "client-auth-nt 1 3" in fake.commands and "client-auth-nt 4 0" in fake.commands
        assert f'client-deny 2 0 "{DENY_REASON}"' in fake.commands
        assert f'client-deny 3 0 "{DENY_REASON}"' in fake.commands
        assert sorted(outcomes) == ["accepted", "accepted", "refused", "refused"]
        assert inst.table.cids("u1") == [1]
        fake.send(b">CLIENT:DISCONNECT,4\r\n>CLIENT:ENV,END\r\n")
        await until(lambda: inst.table.cids("u2") == [])
        answers = {
            "load-stats": b"SUCCESS: nclients=3,bytesin=1,bytesout=2\r\n",
            "kill u1": b"SUCCESS: common name 'u1' found, 2 client(s) killed\r\n",
        }
        fake.answer = lambda line: answers.get(line, b"SUCCESS: ok\r\n")
        inst.end({"u1"})  # OpenVPN counts 3 clients, the table 1: some were never seen
        await until(lambda: "kill u1" in fake.commands)
        assert "client-kill 1 HALT" in fake.commands
        await until(lambda: ended == [2])
        # Every session known: client-kill alone, no kill by common name.
        fake.login(8, "u2", "two")
        await until(lambda: inst.table.cids("u2") == [8])
        answers["load-stats"] = b"SUCCESS: nclients=1,bytesin=1,bytesout=2\r\n"
        inst.end({"u2"})
        await until(lambda: ended == [2, 1])
        assert "client-kill 8 HALT" in fake.commands and "kill u2" not in fake.commands
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    for forbidden in ("status", "bytecount", "log on", "log"):
        assert not any(c == forbidden or c.startswith(forbidden + " ") for c in fake.commands)
    text = caplog.text
    for secret in ("u1", "u2", "ghost", "good", "198.51.100.9", "mgmt-secret"):
        assert secret not in text


async def test_reconnect_after_openvpn_restart_forgets_client_ids(
    fake: FakeOpenVPN, tmp_path: Path
) -> None:
    changes: list[bool] = []
    users = {"u1": User("u1", make_hash(b"good"))}
    inst = instance(fake, tmp_path, users)
    inst._hooks.changed = lambda: changes.append(inst.up)
    task = asyncio.create_task(inst.run())
    try:
        await until(lambda: inst.up)
        fake.login(0, "u1", "good")
        await until(lambda: inst.table.cids("u1") == [0])
        await fake.stop()
        await until(lambda: not inst.up and inst.failing)
        inst.end({"u1"})  # asked while down: waits for the next connection
        await fake.start()
        await until(lambda: inst.up and fake.connections == 2)
        assert inst.table.cids("u1") == []
        await until(lambda: "kill u1" in fake.commands)
        assert "client-kill 0 HALT" not in fake.commands  # id 0 of the old server is not trusted
        assert changes[0] is True and False in changes
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_password_file_refused_for_its_mode(fake: FakeOpenVPN, tmp_path: Path) -> None:
    inst = instance(fake, tmp_path, {})
    Path(inst.config.password_file or "").chmod(0o644)
    task = asyncio.create_task(inst.run())
    try:
        await until(lambda: inst.failing)
        assert fake.connections == 0
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_service_ends_expired_and_removed_users_on_time(
    fake: FakeOpenVPN, tmp_path: Path
) -> None:
    now = [datetime(2026, 12, 1, tzinfo=UTC)]
    cfg = OpenVPNInstanceConfig(fake.path, "tun0", pwfile(tmp_path))
    svc = OpenVPNService((cfg,), clock=lambda: now[0])
    soon = now[0] + timedelta(seconds=0.3)
    users = {
        "u1": User("u1", make_hash(b"a"), soon),
        "u2": User("u2", make_hash(b"b")),
        "old": User("old", make_hash(b"c"), now[0] - timedelta(days=1)),
    }
    svc.offer(users)
    failures: list[BaseException] = []
    await svc.start(failures.append)
    try:
        await until(lambda: svc.up == {"tun0": True})
        # On connecting: the feed's expired users lose sessions started before the agent's.
        await until(lambda: "kill old" in fake.commands)
        fake.login(5, "u1", "a")
        fake.login(6, "u2", "b")
        await until(lambda: {"client-auth-nt 5 0", "client-auth-nt 6 0"} <= set(fake.commands))
        now[0] = soon + timedelta(seconds=0.01)  # the service's timer sees it on waking
        await until(lambda: "client-kill 5 HALT" in fake.commands)
        assert "kill u1" in fake.commands
        svc.offer({"u2": users["u2"]} | {"u3": User("u3", make_hash(b"d"))})
        await until(lambda: "kill u1" in fake.commands)
        svc.offer({"u3": User("u3", make_hash(b"d"))})
        await until(lambda: "client-kill 6 HALT" in fake.commands)
        fake.login(7, "u2", "b")  # left the feed: refused
        await until(lambda: any(c.startswith("client-deny 7 0") for c in fake.commands))
        await fake.stop()
        await until(lambda: svc.unreachable == ["tun0"])
        svc.update(())
        await until(lambda: svc.up == {})
    finally:
        await svc.stop()
    assert failures == []
