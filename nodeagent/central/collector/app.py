"""The collector's HTTP application: signed pushes in; the page, the APIs and /metrics out.

Every public answer is made once per fleet snapshot version (and page
query) and then served from memory with an ETag; a conditional request
that matches gets a 304 with no body. So a flood of visitors costs a
dictionary lookup each, and a flood of pushes costs one render a second
at most (``Fleet.tick``).

Privacy: no access log (the runner is built without one), no handler logs
a request's origin, and nothing about a visitor is kept. The page loads
nothing from a third party and its Content-Security-Policy allows only the
collector's own style sheet and script.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from nodeagent.central.collector import apis
from nodeagent.central.collector.document import BadDocument, parse_document
from nodeagent.central.collector.fleet import Fleet, Snapshot
from nodeagent.central.collector.metrics import CollectorMetrics
from nodeagent.central.collector.page import Query, Row, RowCache, prepare, render_page
from nodeagent.central.collector.verify import Refused, verify_push

log = logging.getLogger(__name__)

__all__ = ["CSP", "MAX_PUSH_BYTES", "Context", "make_app"]

# A status document is a few hundred bytes; the agent's are well under 1 KiB.
MAX_PUSH_BYTES = 64 << 10
CSP = (
    "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
PUBLIC_CACHE = "public, max-age=10"
GZIP_MIN = 1024
STATIC_CACHE = "public, max-age=86400"
_SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": CSP,
}
_STATIC_TYPES = {
    "style.css": "text/css",
    "app.js": "text/javascript",
    "favicon.svg": "image/svg+xml",
}


def _static() -> dict[str, bytes]:
    folder = resources.files("nodeagent.central.collector") / "static"
    return {name: (folder / name).read_bytes() for name in _STATIC_TYPES}


@dataclass
class Context:
    """What the handlers read and the collector keeps current (on the event loop)."""

    fleet: Fleet
    metrics: CollectorMetrics
    secrets: Mapping[str, bytes] = field(default_factory=dict)
    last_push: dict[str, int] = field(default_factory=dict)
    push_enabled: bool = True
    clock: Callable[[], float] = time.time
    refresh: int = 60


@dataclass(slots=True)
class _Cached:
    """One answer, made once: the body, its gzip form (made on first demand), the ETag."""

    body: bytes
    etag: str
    content_type: str
    _gzipped: bytes | None = None

    @property
    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body, 6, mtime=0)
        return self._gzipped


def _etag_matches(request: web.Request, etag: str) -> bool:
    header = request.headers.get("If-None-Match")
    if header is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in header.split(",")]
    return "*" in tags or etag in tags


def _wants_gzip(request: web.Request) -> bool:
    accept = request.headers.get("Accept-Encoding", "")
    return any(part.split(";")[0].strip().lower() == "gzip" for part in accept.split(","))


def _answer(request: web.Request, cached: _Cached, cache_control: str) -> web.Response:
    gz = len(cached.body) >= GZIP_MIN and _wants_gzip(request)
    # Each encoding is its own representation, with its own strong ETag.
    etag = cached.etag[:-1] + '-gz"' if gz else cached.etag
    headers = {**_SECURITY, "ETag": etag, "Cache-Control": cache_control}
    if len(cached.body) >= GZIP_MIN:
        headers["Vary"] = "Accept-Encoding"
    if _etag_matches(request, etag):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = cached.content_type
    if gz:
        headers["Content-Encoding"] = "gzip"
        return web.Response(body=cached.gzipped, headers=headers)
    return web.Response(body=cached.body, headers=headers)


def make_app(ctx: Context) -> web.Application:
    static = _static()
    digests = {name: hashlib.sha256(body).hexdigest()[:16] for name, body in static.items()}
    assets = {name: f"/static/{name}?v={digests[name]}" for name in static}
    cache: dict[object, _Cached] = {}
    cache_version = [-1]
    prepared: list[tuple[Row, ...]] = [()]
    row_cache: RowCache = {}

    def cached(key: object, make: Callable[[], tuple[bytes, str]]) -> _Cached:
        snap = ctx.fleet.snapshot
        if cache_version[0] != snap.version:
            cache.clear()
            cache_version[0] = snap.version
            prepared[0] = prepare(snap, row_cache)
        hit = cache.get(key)
        if hit is None:
            body, content_type = make()
            digest = hashlib.sha256(body).hexdigest()[:20]
            hit = cache[key] = _Cached(body, f'"{digest}"', content_type)
        return hit

    async def page(request: web.Request) -> web.Response:
        countries = frozenset(s.config.country_code for s in ctx.fleet.snapshot.servers)
        query = Query.parse(request.query, countries)

        def make() -> tuple[bytes, str]:
            html = render_page(ctx.fleet.snapshot, query, assets, ctx.refresh, prepared[0])
            return html.encode(), "text/html; charset=utf-8"

        return _answer(request, cached(("page", query), make), PUBLIC_CACHE)

    def api(
        name: str, build: Callable[[Snapshot], object]
    ) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handler(request: web.Request) -> web.Response:
            def make() -> tuple[bytes, str]:
                return apis.encode(build(ctx.fleet.snapshot)), "application/json"

            return _answer(request, cached(name, make), PUBLIC_CACHE)

        return handler

    async def static_file(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in static:
            raise web.HTTPNotFound()
        item = _Cached(static[name], f'"{digests[name]}"', _STATIC_TYPES[name])
        return _answer(request, item, STATIC_CACHE)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(ctx.metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok\n", headers={"Cache-Control": "no-store"})

    gets: dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]] = {
        "/": page,
        "/api/traffic.json": api("traffic", apis.traffic),
        "/api/serverlocations.json": api("locations", apis.server_locations),
        "/api/v1/servers": api("servers", apis.servers),
        "/metrics": metrics,
        "/healthz": healthz,
    }
    push = _push_handler(ctx)

    async def elsewhere(request: web.Request) -> web.Response:
        if request.path in gets:
            raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])
        if request.path == "/api/v1/push":
            raise web.HTTPMethodNotAllowed(request.method, ["POST"])
        raise web.HTTPNotFound()

    app = web.Application(client_max_size=MAX_PUSH_BYTES)
    for path, handler in gets.items():
        app.router.add_get(path, handler, expect_handler=_expect)
    app.router.add_get("/static/{name}", static_file, expect_handler=_expect)
    app.router.add_post("/api/v1/push", push, expect_handler=_expect)
    app.router.add_route("*", "/{tail:.*}", elsewhere, expect_handler=_expect)
    return app


def _push_handler(ctx: Context) -> Callable[[web.Request], Awaitable[web.Response]]:
    """``POST /api/v1/push``: verified (``verify.py``), then checked as a status document."""

    async def push(request: web.Request) -> web.Response:
        if not ctx.push_enabled:
            raise web.HTTPNotFound()
        if (request.content_length or 0) > MAX_PUSH_BYTES:
            return _refuse("too_large", 413)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _refuse("too_large", 413)
        try:
            node, ts = verify_push(
                request.headers,
                body,
                secret_for=ctx.secrets.get,
                now=ctx.clock(),
                last_accepted=ctx.last_push.get,
            )
        except Refused as e:
            return _refuse(e.code, e.status)
        if node not in ctx.fleet.names:
            # A secret for a node the list no longer has (between two reloads).
            return _refuse("bad_signature", 401)
        try:
            reading = parse_document(body, node, ctx.clock())
        except BadDocument as e:
            log.info("push refused node=%s reason=bad_document detail=%s", node, e.code)
            return _refuse("bad_document", 400)
        ctx.last_push[node] = ts
        ctx.fleet.accept(node, reading)
        ctx.metrics.pushes.labels("accepted").inc()
        return web.Response(status=204)

    def _refuse(code: str, status: int) -> web.Response:
        # Counted, and answered with the short code only. Not logged: an
        # unauthenticated sender would choose what the log says, and how often.
        ctx.metrics.pushes.labels(code).inc()
        return web.Response(status=status, text=f"{code}\n", headers={"Cache-Control": "no-store"})

    return push


async def _expect(request: web.Request) -> None:
    """``Expect: 100-continue`` answered; any other value a 417 quoting nothing (as the agent)."""
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() == "100-continue":
        if (request.content_length or 0) > MAX_PUSH_BYTES:
            raise web.HTTPRequestEntityTooLarge(MAX_PUSH_BYTES, request.content_length or 0)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    else:
        raise web.HTTPExpectationFailed(text="unknown Expect\n")
