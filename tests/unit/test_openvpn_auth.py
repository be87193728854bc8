"""Logins: scrypt with the feed's parameters, expiry, slow-down, the bounded pool; the roster."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from nodeagent.core.model import User
from nodeagent.feed.snapshot import scrypt_problem
from nodeagent.openvpn.auth import DUMMY_HASH, Authenticator, Failures, parse_hash, verify
from nodeagent.openvpn.sessions import Roster, SessionTable

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def make_hash(password: bytes, n: int = 16, r: int = 1, p: int = 1, salt: bytes = b"s" * 16) -> str:
    digest = hashlib.scrypt(password, salt=salt, n=n, r=r, p=p, dklen=32)
    return (
        f"scrypt${n}${r}${p}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"
    )


def user(name: str, password: bytes, expires: datetime | None = None) -> User:
    return User(name, make_hash(password), expires)


def test_dummy_hash_is_a_valid_feed_hash() -> None:
    assert scrypt_problem(DUMMY_HASH) is None
    assert repr(parse_hash(DUMMY_HASH)) == "ScryptHash(n=16384, r=8, p=1)"


def test_verify() -> None:
    dummy = parse_hash(make_hash(b"x"))
    u = user("u1", b"secret")
    assert verify(u, b"secret", NOW, dummy)
    assert not verify(u, b"secreT", NOW, dummy)
    assert not verify(u, None, NOW, dummy)
    assert not verify(None, b"secret", NOW, dummy)
    assert not verify(user("u1", b"secret", NOW), b"secret", NOW, dummy)  # expired at NOW
    assert verify(user("u1", b"secret", NOW + timedelta(seconds=1)), b"secret", NOW, dummy)
    assert not verify(User("u1", "scrypt$bad"), b"secret", NOW, dummy)
    # Past the feed's bound (1 GiB here): never computed, whoever handed it in.
    huge = make_hash(b"x").replace("scrypt$16$1$", "scrypt$1048576$8$")
    assert not verify(User("u1", huge), b"x", NOW, dummy)
    with pytest.raises(ValueError):
        parse_hash(make_hash(b"x").replace("scrypt$16$1$1$", "scrypt$16$1$5$"))
    assert not verify(u, b"secret" * 1000, NOW, dummy)
    # The dummy's own (zero) digest is never a way in.
    zero = parse_hash(make_hash(b"")).__class__(16, 1, 1, b"", b"\0" * 32)
    assert not verify(None, b"", NOW, zero)


def test_failures_slow_a_username_down_and_forget() -> None:
    t = [0.0]
    f = Failures(free=2, base=1.0, cap=8.0, forget_after=100.0, max_entries=3, clock=lambda: t[0])
    assert f.delay("a") == 0
    for expected in (0, 0, 1, 2, 4, 8, 8):
        assert f.delay("a") == expected
        f.failed("a")
    t[0] = 101.0
    assert f.delay("a") == 0 and len(f) == 0
    for name in "bcde":
        f.failed(name)
    assert len(f) == 3  # bounded: the oldest went
    f.succeeded("e")
    assert len(f) == 2


async def test_authenticator_decides_off_the_loop_and_bounds_the_queue() -> None:
    auth = Authenticator(workers=2, max_pending=4, clock=lambda: NOW)
    try:
        auth.set_users({"u1": user("u1", b"pw"), "old": user("old", b"pw", NOW)})
        assert (await auth.decide("u1", b"pw")).accepted
        assert not (await auth.decide("u1", b"no")).accepted
        assert not (await auth.decide("old", b"pw")).accepted
        assert not (await auth.decide("nobody", b"pw")).accepted
        assert not (await auth.decide(None, None)).accepted
        # A burst past the bound: the extra ones are refused unchecked.
        decisions = await asyncio.gather(*(auth.decide("u1", b"pw") for _ in range(10)))
        assert sum(d.accepted for d in decisions) == 4
        assert sum(d.overloaded for d in decisions) == 6
        assert auth.pending == 0
    finally:
        auth.close()


async def test_the_loop_runs_while_logins_hash() -> None:
    auth = Authenticator(workers=2, clock=lambda: NOW)
    h = make_hash(b"pw", n=1 << 14, r=8)
    auth.set_users({"u1": User("u1", h)})
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    t = asyncio.create_task(ticker())
    try:
        results = await asyncio.gather(*(auth.decide("u1", b"pw") for _ in range(6)))
    finally:
        t.cancel()
        auth.close()
    assert all(r.accepted for r in results)
    assert ticks > 6  # the loop kept turning during six real-cost hashes


def test_session_table() -> None:
    t = SessionTable()
    t.add(1, "u7")
    t.add(2, "u7")
    t.add(3, "u8")
    assert t.cids("u7") == [1, 2] and t.user(3) == "u8" and len(t) == 3
    t.add(2, "u8")
    assert t.cids("u7") == [1] and t.cids("u8") == [2, 3]
    t.drop(1)
    t.drop(99)
    assert t.usernames() == {"u8"}
    assert "u8" not in repr(t)


def test_roster_names_who_loses_their_right() -> None:
    r = Roster()
    soon = NOW + timedelta(seconds=10)
    users = {"a": user("a", b"x"), "b": user("b", b"x", soon), "c": user("c", b"x", NOW)}
    # The first state: c is listed but already expired.
    assert r.offer(users, NOW) == {"c"}
    assert r.check(NOW) == set()
    assert r.next_expiry(NOW) == soon
    assert r.check(soon) == {"b"}
    assert r.check(soon) == set()
    assert r.invalid_listed(soon) == {"b", "c"}
    # a leaves the feed; b's account is renewed, then it expires again.
    renewed = {"b": user("b", b"x", soon + timedelta(hours=1)), "c": users["c"]}
    assert r.offer(renewed, soon) == {"a"}
    assert r.is_valid("b", soon) and not r.is_valid("a", soon) and not r.is_valid("c", soon)
    assert r.check(soon + timedelta(hours=1)) == {"b"}


@pytest.mark.parametrize("n", [2, 1024])
def test_hash_parameters_round_trip(n: int) -> None:
    h = parse_hash(make_hash(b"pw", n=n))
    assert (h.n, h.r, h.p, len(h.digest)) == (n, 1, 1, 32)
