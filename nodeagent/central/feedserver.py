"""Reference central feed server: accounts in, full snapshots, deltas and long-poll out.

Good enough for the tests, the benchmarks and the demo, not for production.
It serves the feed protocol of docs/feed.md from an in-memory ``FeedStore``::

    GET /feed                     -> 200 full snapshot
    GET /feed?since=V&wait=S      -> 200 delta from V, or 304 after S seconds without
                                     a change, or 410 when V is older than the history

The store (versions, the delta history, the documents it builds) is
:mod:`nodeagent.central.feedstore`. This module holds the aiohttp application
around it, the faults it can misbehave with, and the demo command.
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
import signal
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from nodeagent.central.feedstore import FeedStore, Json
from nodeagent.config.secretfile import read_secret

# FeedStore is re-exported: a FeedServer is built around one.
__all__ = ["Fault", "FeedServer", "FeedStore", "main"]

log = logging.getLogger(__name__)

MAX_WAIT = 300.0
GZIP_MIN = 4096


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
            async with asyncio.timeout(1.0):
                await reload.wait()
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
