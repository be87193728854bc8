"""Reference central feed server: accounts in, full snapshots, deltas and long-poll out.

Good enough for the tests, the benchmarks and the demo, not for production.
It serves the feed protocol of docs/feed.md from an in-memory ``FeedStore``::

    GET /feed                     -> 200 full snapshot
    GET /feed?since=V&wait=S      -> 200 delta from V, or 304 after S seconds without
                                     a change, or 410 when V is older than the history

Every change makes a new version; the store keeps the last ``history`` of them
so that a client behind by a few versions gets a delta, not a full snapshot.
Versions are ``<epoch>.<n>`` with a random epoch per start, so a restarted
server answers 410 to every version of its previous life.

The store does not validate what it serves: it is the test double of a central
service, and tests need it to serve duplicate allowed IPs and the like.
``FeedServer.inject`` queues faults for the next requests (status codes,
truncated, invalid, oversized or gzip-bomb bodies, delays, a version gap).

Run for a demo::

    python -m nodeagent.central.feedserver --accounts accounts.json --port 8700 \
        --token-file feed.token

``accounts.json`` is a full snapshot without ``version``; it is re-read when it
changes and on SIGHUP, and the difference becomes one new version.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip
import hmac
import json
import logging
import secrets
import signal
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from nodeagent.config.secretfile import read_secret

__all__ = ["Fault", "FeedServer", "FeedStore", "main"]

log = logging.getLogger(__name__)

MAX_WAIT = 300.0
GZIP_MIN = 4096

Json = dict[str, Any]


@dataclass
class _Change:
    """What one version changed: the keys touched (added, replaced or removed)."""

    peers: dict[str, set[str]]
    users: set[str]


class FeedStore:
    """Accounts in memory and the history of what each version changed.

    Not thread-safe: call it on the event loop that runs the server (from another
    thread, through ``loop.call_soon_threadsafe``).
    """

    def __init__(self, history: int = 1000, epoch: str | None = None) -> None:
        self.history = history
        self.epoch = epoch or secrets.token_hex(4)
        self.n = 0
        self.peers: dict[str, dict[str, Json]] = {}
        self.users: dict[str, Json] = {}
        # n -> what changed from version n to n + 1; the oldest are dropped first.
        self._changes: OrderedDict[int, _Change] = OrderedDict()
        self._waiters: set[asyncio.Future[None]] = set()
        self._full_cache: tuple[int, bytes, bytes | None] | None = None

    @property
    def version(self) -> str:
        return f"{self.epoch}.{self.n}"

    # -- changes ---------------------------------------------------------------------

    def apply(
        self,
        upsert: Mapping[str, Iterable[Json]] | None = None,
        remove: Mapping[str, Iterable[str]] | None = None,
        upsert_users: Iterable[Json] = (),
        remove_users: Iterable[str] = (),
    ) -> str:
        """One new version with these changes (peers per interface, users); returns it."""
        change = _Change({}, set())
        for iface, keys in (remove or {}).items():
            table = self.peers.setdefault(iface, {})
            for k in keys:
                table.pop(k, None)
                change.peers.setdefault(iface, set()).add(k)
        for iface, items in (upsert or {}).items():
            table = self.peers.setdefault(iface, {})
            for item in items:
                table[item["public_key"]] = dict(item)
                change.peers.setdefault(iface, set()).add(item["public_key"])
        for name in remove_users:
            self.users.pop(name, None)
            change.users.add(name)
        for item in upsert_users:
            self.users[item["username"]] = dict(item)
            change.users.add(item["username"])
        return self._commit(change)

    def replace(self, accounts: Json) -> str | None:
        """Make the accounts equal to ``accounts`` (a snapshot's shape); None if nothing changed."""
        new_peers = {
            iface: {p["public_key"]: p for p in body.get("peers", [])}
            for iface, body in accounts.get("wireguard", {}).items()
        }
        new_users = {u["username"]: u for u in (accounts.get("openvpn") or {}).get("users", [])}
        upsert: dict[str, list[Json]] = {}
        remove: dict[str, list[str]] = {}
        for iface in new_peers.keys() | self.peers.keys():
            old, new = self.peers.get(iface, {}), new_peers.get(iface, {})
            remove[iface] = [k for k in old if k not in new]
            upsert[iface] = [p for k, p in new.items() if old.get(k) != p]
        upsert_users = [u for k, u in new_users.items() if self.users.get(k) != u]
        remove_users = [k for k in self.users if k not in new_users]
        if not (any(upsert.values()) or any(remove.values()) or upsert_users or remove_users):
            return None
        for iface in new_peers:
            self.peers.setdefault(iface, {})
        return self.apply(upsert, remove, upsert_users, remove_users)

    def _commit(self, change: _Change) -> str:
        self._changes[self.n] = change
        self.n += 1
        while len(self._changes) > self.history:
            self._changes.popitem(last=False)
        waiters, self._waiters = self._waiters, set()
        for w in waiters:
            if not w.done():
                w.set_result(None)
        return self.version

    async def wait_change(self, since: str, timeout: float) -> None:
        """Return when the version is no longer ``since``, or after ``timeout``."""
        if since != self.version or timeout <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.add(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
        except TimeoutError:
            pass
        finally:
            self._waiters.discard(waiter)

    # -- documents -------------------------------------------------------------------

    def full_document(self) -> Json:
        doc: Json = {
            "version": self.version,
            "full": True,
            "wireguard": {i: {"peers": list(t.values())} for i, t in self.peers.items()},
        }
        if self.users:
            doc["openvpn"] = {"users": list(self.users.values())}
        return doc

    def full_body(self, gzipped: bool) -> bytes:
        """The encoded full snapshot, cached per version (a fleet asks for the same one)."""
        cache = self._full_cache
        if cache is None or cache[0] != self.n:
            cache = (self.n, json.dumps(self.full_document()).encode(), None)
        if gzipped and cache[2] is None:
            cache = (cache[0], cache[1], gzip.compress(cache[1], compresslevel=1))
        self._full_cache = cache
        return cache[2] if gzipped and cache[2] is not None else cache[1]

    def delta_document(self, since: str) -> Json | None:
        """The delta from ``since`` to now; None if ``since`` is unknown or too old."""
        epoch, _, n_text = since.rpartition(".")
        if epoch != self.epoch or not n_text.isdigit():
            return None
        start = int(n_text)
        if start > self.n or (start < self.n and start not in self._changes):
            return None
        touched: dict[str, set[str]] = {}
        users: set[str] = set()
        for n in range(start, self.n):
            change = self._changes[n]
            for iface, keys in change.peers.items():
                touched.setdefault(iface, set()).update(keys)
            users |= change.users
        wireguard: Json = {}
        for iface, keys in touched.items():
            table = self.peers.get(iface, {})
            wireguard[iface] = {
                "upsert": [table[k] for k in sorted(keys) if k in table],
                "remove": [k for k in sorted(keys) if k not in table],
            }
        doc: Json = {"version": self.version, "full": False, "since": since, "wireguard": wireguard}
        if users:
            doc["openvpn"] = {
                "upsert": [self.users[u] for u in sorted(users) if u in self.users],
                "remove": [u for u in sorted(users) if u not in self.users],
            }
        return doc


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, used for the next request that reaches the feed.

    kinds: ``status`` (answer ``status``), ``delay`` (wait ``seconds``, then answer
    normally), ``truncate`` (announce the full snapshot's length, send half, close),
    ``invalid_json`` (a corrupted full snapshot), ``oversize`` (a valid JSON body of
    ``size`` bytes; with ``declare_length`` a Content-Length, else chunked),
    ``gzip_bomb`` (a small gzip body that inflates to ``size`` bytes), ``gap`` (a
    delta whose ``since`` is not the one asked for).
    """

    kind: str
    status: int = 500
    seconds: float = 0.0
    size: int = 0
    declare_length: bool = False


class FeedServer:
    """The aiohttp application around a ``FeedStore``; start, stop and start again."""

    def __init__(
        self,
        store: FeedStore | None = None,
        *,
        token: bytes | None = None,
        path: str = "/feed",
    ) -> None:
        self.store = store or FeedStore()
        self.token = token
        self.path = path
        self.faults: list[Fault] = []
        # What tests look at: requests seen, the last since=, bodies sent gzipped,
        # and how much of an oversized body got out before the client hung up.
        self.requests = 0
        self.last_since: str | None = None
        self.gzipped_answers = 0
        self.oversize_sent = 0
        self.app = web.Application()
        self.app.router.add_get(path, self._handle)
        self._runner: web.AppRunner | None = None
        self.host = "127.0.0.1"
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}{self.path}"

    def inject(self, fault: Fault, count: int = 1) -> None:
        self.faults.extend([fault] * count)

    async def start(self, host: str = "127.0.0.1", port: int | None = None) -> None:
        """Listen on ``host:port`` (port 0: any; None: the port of the previous start)."""
        self.host = host
        self._runner = web.AppRunner(self.app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, self.port if port is None else port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # -- the handler -----------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        if self.token is None:
            return True
        expected = b"Bearer " + self.token
        return hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if not self._authorized(request):
            return web.Response(status=401)
        since = request.query.get("since")
        self.last_since = since
        try:
            wait = min(max(float(request.query.get("wait", "0")), 0.0), MAX_WAIT)
        except ValueError:
            return web.Response(status=400)
        gz = "gzip" in request.headers.get("Accept-Encoding", "")
        fault = self.faults.pop(0) if self.faults else None
        if fault is not None:
            if fault.kind == "delay":
                await asyncio.sleep(fault.seconds)
            else:
                return await self._faulty(request, fault, since)
        if since is None:
            resp = _body(self.store.full_body(gz), gz)
        else:
            await self.store.wait_change(since, wait)
            if since == self.store.version:
                return web.Response(status=304)
            doc = self.store.delta_document(since)
            if doc is None:
                return web.Response(status=410)
            resp = _json(doc, gz)
        if resp.headers.get("Content-Encoding") == "gzip":
            self.gzipped_answers += 1
        return resp

    async def _faulty(
        self, request: web.Request, fault: Fault, since: str | None
    ) -> web.StreamResponse:
        if fault.kind == "status":
            return web.Response(status=fault.status)
        if fault.kind == "invalid_json":
            return _body(b"{" + self.store.full_body(False), False)
        if fault.kind == "gap":
            doc = self.store.delta_document(since or "") or {
                "version": self.store.version,
                "full": False,
                "wireguard": {},
            }
            doc["since"] = f"{self.store.epoch}.gap"
            return _json(doc, False)
        if fault.kind == "gzip_bomb":
            bomb = gzip.compress(b'{"pad": "' + b" " * fault.size + b'"}', compresslevel=9)
            return _body(bomb, True)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        if fault.kind == "truncate":
            body = self.store.full_body(False)
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            # Closing the socket mid-body is what a crashed proxy or a cut link looks like.
            if request.transport is not None:
                request.transport.close()
            return resp
        if fault.kind == "oversize":
            if fault.declare_length:
                resp.content_length = fault.size
            else:
                resp.enable_chunked_encoding()
            await resp.prepare(request)
            head = b'{"version": "x", "full": true, "pad": "'
            sent = len(head)
            await resp.write(head)
            block = b" " * 65536
            with contextlib.suppress(ConnectionError):
                while sent < fault.size - 2:
                    piece = block[: fault.size - 2 - sent]
                    await resp.write(piece)
                    sent += len(piece)
                    self.oversize_sent = sent
                await resp.write(b'"}')
                await resp.write_eof()
            return resp
        raise ValueError(f"unknown fault kind {fault.kind!r}")


def _json(doc: Json, gz: bool) -> web.Response:
    body = json.dumps(doc).encode()
    return _body(
        gzip.compress(body, compresslevel=1) if gz and len(body) >= GZIP_MIN else body,
        gz and len(body) >= GZIP_MIN,
    )


def _body(body: bytes, gzipped: bool) -> web.Response:
    headers = {"Content-Type": "application/json"}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=body, headers=headers)


# -- the demo command -------------------------------------------------------------------


def _read_accounts(path: Path) -> Json:
    doc = json.loads(path.read_bytes())
    if not isinstance(doc, dict):
        raise ValueError("accounts file must hold a JSON object")
    return doc


async def _serve(args: argparse.Namespace) -> None:
    token = read_secret(args.token_file) if args.token_file else None
    server = FeedServer(FeedStore(history=args.history), token=token)
    accounts = Path(args.accounts)
    server.store.replace(_read_accounts(accounts))
    await server.start(args.host, args.port)
    log.info("feedserver listening port=%d version=%s", server.port, server.store.version)
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    mtime = accounts.stat().st_mtime_ns
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reload.wait(), 1.0)
        with contextlib.suppress(OSError):
            now = accounts.stat().st_mtime_ns
            if now == mtime and not reload.is_set():
                continue
            mtime = now
        reload.clear()
        try:
            version = server.store.replace(_read_accounts(accounts))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.error("feedserver accounts_unreadable error=%s", type(e).__name__)
            continue
        if version is not None:
            log.info("feedserver accounts_changed version=%s", version)
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m nodeagent.central.feedserver", description=__doc__)
    ap.add_argument("--accounts", required=True, help="JSON file shaped like a full snapshot")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700)
    ap.add_argument("--token-file", help="bearer token clients must send (mode 0600)")
    ap.add_argument("--history", type=int, default=1000, help="versions kept for deltas")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
