"""What OpenVPN logins and expiry cost the agent, in-process, against a scripted management socket.

    python -m bench.openvpn_bench [--users 1000] [--logins 200] [--burst 50]

The agent's own :class:`~nodeagent.daemon.openvpn.OpenVPNService` talks to
the unit tier's scripted OpenVPN (a unix socket that answers every command,
``tests/unit/test_openvpn_instance.py``) with ``--users`` users at the
example's scrypt cost (N=16384, r=8, p=1). Printed:

- logins per second, ``--logins`` correct logins spread over the users, all
  sent at once (the pool has 2 workers);
- for a burst of ``--burst`` logins sent at once: p50/p99/max from the
  ``>CLIENT:ENV,END`` write to the ``client-auth-nt`` read;
- the event loop's longest stall during that burst (a 1 ms ticker);
- from an account's ``expires_at`` to its ``client-kill`` reaching the socket.

A benchmark, not a test: it asserts nothing about time.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nodeagent.config.model import OpenVPNInstanceConfig
from nodeagent.core.model import User
from nodeagent.daemon.openvpn import OpenVPNService
from tests.unit.test_openvpn_auth import make_hash
from tests.unit.test_openvpn_instance import PASSWORD, FakeOpenVPN, until


class Timed(FakeOpenVPN):
    """Notes when each command line arrived."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.seen: dict[str, float] = {}
        self.answer = self._timed

    def _timed(self, line: str) -> bytes:
        self.seen.setdefault(line, time.perf_counter())
        return self.default_answer(line)


async def stall_during(work: asyncio.Future[object]) -> float:
    worst, last = 0.0, time.perf_counter()
    while not work.done():
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst, last = max(worst, now - last - 0.001), now
    return worst


async def main(users: int, logins: int, burst: int) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        pw = tmp / "pw"
        pw.write_bytes(PASSWORD + b"\n")
        pw.chmod(0o600)
        fake = Timed(tmp / "m.sock")
        await fake.start()
        t0 = time.perf_counter()
        h = make_hash(b"pw", n=16384, r=8)  # one hash shared: making 1,000 costs a minute
        roster = {f"user{i:05d}": User(f"user{i:05d}", h) for i in range(users)}
        print(f"users: {users} at N=16384 r=8 p=1 (hash made in {time.perf_counter() - t0:.2f} s)")
        svc = OpenVPNService((OpenVPNInstanceConfig(fake.path, "tun0", str(pw)),))
        svc.offer(roster)
        await svc.start(lambda e: None)
        await until(lambda: svc.up == {"tun0": True})

        # Logins per second.
        start = time.perf_counter()
        for cid in range(logins):
            fake.login(cid, f"user{cid % users:05d}", "pw")
        accepted = lambda: sum(c.startswith("client-auth-nt") for c in fake.commands)  # noqa: E731
        await until(lambda: accepted() == logins, 600)
        took = time.perf_counter() - start
        print(f"logins: {logins} in {took:.2f} s = {logins / took:.1f} logins/s")

        # A burst: latency per login and the loop's longest stall.
        base = 100_000
        sent: dict[int, float] = {}
        for i in range(burst):
            fake.login(base + i, f"user{i % users:05d}", "pw")
            sent[base + i] = time.perf_counter()
        done = asyncio.ensure_future(
            until(lambda: all(f"client-auth-nt {c} 0" in fake.seen for c in sent), 600)
        )
        stall = await stall_during(done)
        await done
        lat = sorted(fake.seen[f"client-auth-nt {c} 0"] - t for c, t in sent.items())
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        print(
            f"burst of {burst}: CONNECT->answer p50 {statistics.median(lat) * 1000:.0f} ms, "
            f"p99 {p99 * 1000:.0f} ms, max {lat[-1] * 1000:.0f} ms; "
            f"longest loop stall {stall * 1000:.1f} ms"
        )

        # Expiry to session end.
        soon = datetime.now(UTC) + timedelta(seconds=2)
        svc.offer({**roster, "expiring": User("expiring", h, soon)})
        fake.login(200_000, "expiring", "pw")
        await until(lambda: "client-auth-nt 200000 0" in fake.seen, 60)
        await until(lambda: "client-kill 200000 HALT" in fake.seen, 60)
        late = fake.seen["client-kill 200000 HALT"] - (
            time.perf_counter() - (datetime.now(UTC) - soon).total_seconds()
        )
        print(f"expiry -> client-kill on the socket: {late * 1000:.0f} ms")
        await svc.stop()
        await fake.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=1000)
    ap.add_argument("--logins", type=int, default=200)
    ap.add_argument("--burst", type=int, default=50)
    a = ap.parse_args()
    asyncio.run(main(a.users, a.logins, a.burst))
