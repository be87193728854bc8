"""HTTP endpoints: ``/status``, ``/metrics``, ``/healthz``, ``/readyz`` (aiohttp).

Every handler reads what the agent's tasks cached: the encoded status
document, the metrics snapshot, two health callbacks. None touches the
kernel, so a burst of scrapes cannot slow a reconcile or be slowed by one.

``/status`` and ``/metrics`` may require a bearer token, compared in constant
time. ``/healthz`` and ``/readyz`` never do: systemd and load balancers probe
them, and they say nothing beyond "up" and a short reason.

There is no access log: it would record client addresses and times.

A server is built from :class:`HttpSettings`: the ``http`` section with what
its token and TLS files held when read. A reload compares settings, so a token
rotated in place or a renewed certificate is noticed; the running server takes
them without closing its listeners (a certificate is swapped in per new TLS
handshake), and only new addresses, or TLS turned on or off, need a new one.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

from aiohttp import HttpVersion11, web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry

from nodeagent.config.agent import HTTPConfig
from nodeagent.config.secretfile import read_secret

log = logging.getLogger(__name__)

__all__ = [
    "HttpServer",
    "HttpSettings",
    "Served",
    "Sources",
    "make_handler",
    "split_host_port",
    "tls_context",
]

PROTECTED = frozenset({"/status", "/metrics"})
METHODS = ("GET", "HEAD")


class Served(Protocol):
    """What the endpoints answer with; ``status_body`` returns at once, from cached state.

    The probes return None when fine, else a short reason code. The agent
    serves :class:`Sources`; its serving process asks the agent for all but
    the status body (``nodeagent.daemon.httpprocess``).
    """

    def status_body(self) -> bytes: ...

    async def metrics_text(self) -> bytes: ...

    async def health_reason(self) -> str | None: ...

    async def ready_reason(self) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Sources:
    """The agent's own answers; every callable must return at once, from cached state.

    ``health`` and ``ready`` return None when fine, else a short reason code.
    """

    status: Callable[[], bytes]
    registry: CollectorRegistry
    health: Callable[[], str | None]
    ready: Callable[[], str | None]

    def status_body(self) -> bytes:
        return self.status()

    def metrics_now(self) -> bytes:
        return generate_latest(self.registry)

    async def metrics_text(self) -> bytes:
        return self.metrics_now()

    async def health_reason(self) -> str | None:
        return self.health()

    async def ready_reason(self) -> str | None:
        return self.ready()


def _authorized(request: web.BaseRequest, token: bytes) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    # Both sides as bytes: compare_digest on str refuses non-ASCII input with an
    # exception, which would turn a bad header into a 500.
    return hmac.compare_digest(presented.strip().encode("utf-8", "replace"), token)


Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def make_handler(sources: Served, token: Callable[[], bytes | None] = lambda: None) -> Handler:
    """The one request handler; ``/status`` and ``/metrics`` need ``token()`` while it is set.

    It runs under aiohttp's low-level server (``web.Server``): four fixed paths
    need no router, middleware chain or application, and without them the
    server answers about 1.3 times the requests a second (200 connections, on
    the machine of the README's figures). A request with an ``Expect`` header
    passes ``_expect`` first, then the token, then the path and the method: a
    404 for any other path, a 405 for any method but GET and HEAD.
    """

    async def status(_: web.BaseRequest) -> web.Response:
        return web.Response(
            body=sources.status_body(),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def metrics(_: web.BaseRequest) -> web.Response:
        return web.Response(
            body=await sources.metrics_text(),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    def probe(check: Callable[[], Awaitable[str | None]]) -> Handler:
        async def handler(_: web.BaseRequest) -> web.Response:
            reason = await check()
            if reason is None:
                return web.Response(text="ok\n")
            return web.Response(status=503, text=f"{reason}\n")

        return handler

    routes: dict[str, Handler] = {
        "/status": status,
        "/metrics": metrics,
        "/healthz": probe(sources.health_reason),
        "/readyz": probe(sources.ready_reason),
    }

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        if request.headers.get("Expect"):
            await _expect(request)
        required = token() if request.path in PROTECTED else None
        if required is not None and not _authorized(request, required):
            return web.Response(
                status=401,
                text="unauthorized\n",
                headers={"WWW-Authenticate": 'Bearer realm="nodeagent"'},
            )
        route = routes.get(request.path)
        if route is None:
            raise web.HTTPNotFound()
        if request.method not in METHODS:
            raise web.HTTPMethodNotAllowed(request.method, METHODS)
        return await route(request)

    return handle


async def _expect(request: web.BaseRequest) -> None:
    """``Expect: 100-continue`` answered as aiohttp does; any other value is a 417 quoting nothing.

    aiohttp's own handler (which only its router calls) quotes the value in its
    417, and building that answer fails on a value that is not UTF-8
    (``Expect: \\x80``): a 500 (aiohttp 3.14).
    """
    if request.version != HttpVersion11:
        return
    if request.headers.get("Expect", "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer's body has not started
    else:
        raise web.HTTPExpectationFailed(text="unknown Expect\n")


def split_host_port(address: str) -> tuple[str, int]:
    """``127.0.0.1:9586`` or ``[::1]:9586`` (as config.py validated it) to (host, port)."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """A server context with the configured certificate; TLS 1.2 at least."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert_file, key_file)
    return ctx


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """An ``http`` section with the token it names and a digest of its TLS files, as read."""

    config: HTTPConfig
    token: bytes | None = field(repr=False)
    # SHA-256 of the certificate and of the key: enough to see a renewal, and
    # no second copy of the key in memory.
    tls_digest: tuple[bytes, bytes] | None = field(repr=False)

    @classmethod
    def read(cls, config: HTTPConfig) -> HttpSettings:
        """Reads the files now; raises ``OSError`` or ``ValueError`` (as ``read_secret``)."""
        token = read_secret(config.token_file) if config.token_file else None
        digest = None
        if config.tls is not None:
            cert = Path(config.tls.cert_file).read_bytes()
            key = read_secret(config.tls.key_file)
            digest = (hashlib.sha256(cert).digest(), hashlib.sha256(key).digest())
        return cls(config, token, digest)

    def takes(self, new: HttpSettings) -> bool:
        """Whether a server of these settings can take ``new`` in place: same addresses and TLS."""
        old, cfg = self.config, new.config
        return old.listen == cfg.listen and (old.tls is None) == (cfg.tls is None)


class HttpServer:
    """Serves the app on every configured address; an async context manager.

    ``async with HttpServer.from_config(cfg, sources):`` binds on enter (an
    address in use raises ``OSError`` there) and closes the listeners on exit.
    A closed server may be started again, with its current token and certificate.
    """

    def __init__(self, sources: Served, settings: HttpSettings) -> None:
        """Loads the certificate now (``ssl.SSLError`` if it does not match the key)."""
        self.settings = settings
        self._token = settings.token
        self._handler = make_handler(sources, lambda: self._token)
        self._tls: ssl.SSLContext | None = None  # the certificate new handshakes get
        self._listener_tls: ssl.SSLContext | None = None  # what the listeners were given
        if settings.config.tls is not None:
            self._tls = self._listener_tls = self._load_tls(settings)
        self._runner: web.ServerRunner | None = None

    def _load_tls(self, settings: HttpSettings) -> ssl.SSLContext:
        tls = settings.config.tls
        assert tls is not None
        ctx = tls_context(tls.cert_file, tls.key_file)
        # Every handshake, with or without SNI, passes here: it gets the newest certificate.
        ctx.sni_callback = self._current_tls
        return ctx

    def _current_tls(self, conn: ssl.SSLObject, _name: str | None, _ctx: ssl.SSLContext) -> None:
        if self._tls is not None and conn.context is not self._tls:
            conn.context = self._tls

    @classmethod
    def from_config(cls, config: HTTPConfig, sources: Served) -> HttpServer:
        """Reads the token and TLS files now: a bad file fails the start, not the first request."""
        return cls(sources, HttpSettings.read(config))

    def takes(self, settings: HttpSettings) -> bool:
        """Whether :meth:`update` can apply ``settings``: same addresses, TLS still on or off."""
        return self.settings.takes(settings)

    async def update(self, settings: HttpSettings) -> None:
        """Take a new token and certificate without closing a listener or a connection.

        Only for settings this server :meth:`takes`. Raises ``OSError``
        (``ssl.SSLError``) if the certificate does not load; then nothing changed.
        """
        if not self.takes(settings):
            raise ValueError("these settings need a new server")
        tls = self._load_tls(settings) if settings.config.tls is not None else None
        self._tls, self._token, self.settings = tls, settings.token, settings

    @property
    def ports(self) -> list[int]:
        """The bound ports (useful with port 0 in tests)."""
        ports: list[int] = []
        if self._runner is not None:
            for addr in self._runner.addresses:
                ports.append(int(addr[1]))
        return ports

    async def start(self) -> None:
        # access_log=None: an access log line is a client address with a time.
        server = web.Server(self._handler, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False)
        await runner.setup()
        self._runner = runner
        try:
            for address in self.settings.config.listen:
                host, port = split_host_port(address)
                site = web.TCPSite(runner, host, port, ssl_context=self._listener_tls, backlog=1024)
                await site.start()
                log.info("http listening port=%d tls=%s", port, self._tls is not None)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
