"""The HTTP endpoints in a process of their own, forked before the agent starts.

A reconcile pass of 60,000 peers keeps a worker thread busy for most of a
second; in one interpreter the event loop then waits for the GIL after each
socket call (a convoy): with 200 connections, ``/status`` p99 was 460 ms.
The serving process never runs a pass: it waits for a CPU, not a lock.

- ``/status`` is served from the last body the agent sent (it sends each new
  one as its status board renders it): a request never waits for the agent.
- ``/metrics``, ``/healthz`` and ``/readyz`` are asked of the agent per
  request: the metrics are current, and ``/healthz`` answers for the agent's
  loop (``unresponsive`` if it does not answer in :data:`ASK_TIMEOUT`).
- The agent starts, updates and closes the one server by request and reply
  (:class:`ProcessServer` has :class:`HttpServer`'s interface), so a reload, a
  bind error or a bad certificate behave as in one process.

``nodeagent run`` forks with :meth:`HttpProcess.fork` after the imports, while
there is no event loop or thread: the processes share those pages. The child
ignores SIGTERM, SIGINT and SIGHUP (the agent's) and exits when the agent's end
of the socket closes, at its stop or its death. If the child dies, the agent's
HTTP service fails and the supervisor's restart serves in the agent itself.
Messages are pickled tuples with a length prefix; both ends are this program.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import logging
import math
import os
import pickle
import signal
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from nodeagent.config.agent import LogConfig
from nodeagent.daemon.service import Failed
from nodeagent.publish.http import HttpServer, HttpSettings, Sources

log = logging.getLogger(__name__)

__all__ = ["ASK_TIMEOUT", "HttpProcess", "ProcessServer"]

#: How long the serving process waits for the agent's answer to a probe or a scrape.
ASK_TIMEOUT = 5.0
#: How long the agent's stop waits for the process to exit before it kills it.
CLOSE_TIMEOUT = 10.0
_FRAME = struct.Struct("!I")
_AGENTS_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

LoopHandler = Callable[[asyncio.AbstractEventLoop, Mapping[str, Any]], None]
ConfigureLogging = Callable[[LogConfig], None]


class ProcessLost(ConnectionError):
    """The serving process is gone."""


def _frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


async def _receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message, or None when the other end closed between messages."""
    try:
        head = await reader.readexactly(_FRAME.size)
    except asyncio.IncompleteReadError as e:
        if e.partial:
            raise ProcessLost("cut mid-message") from None
        return None
    (size,) = _FRAME.unpack(head)
    # Safe to unpickle: the socket pair was made before the fork, and only the
    # two processes of this program hold its ends.
    message = pickle.loads(await reader.readexactly(size))  # noqa: S301
    if not isinstance(message, tuple):
        raise ProcessLost("not a message")
    return message


def _error(e: Exception) -> tuple[Any, ...]:
    # The type and errno only: an exception's text quotes addresses and files.
    return ("error", type(e).__name__, getattr(e, "errno", None))


# --- the agent's side -------------------------------------------------------------------


class HttpProcess:
    """The agent's end of the serving process."""

    def __init__(self, pid: int, sock: socket.socket) -> None:
        self.pid = pid
        self._sock: socket.socket | None = sock
        self._writer: asyncio.StreamWriter | None = None
        self._listener: asyncio.Task[None] | None = None
        self._replies: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
        self._control = asyncio.Lock()
        self._sources: Sources | None = None
        self._status: bytes | None = None
        self._on_lost: Failed | None = None
        self._closing = False
        self.lost = False

    @classmethod
    def fork(cls, loop_handler: LoopHandler, configure_logging: ConfigureLogging) -> HttpProcess:
        """Fork the serving process; call with no event loop and no thread running."""
        ours, theirs = socket.socketpair()
        gc.freeze()  # the shared imports stay shared: no collection writes to their pages
        # Held until the child ignores them: a SIGTERM right after the fork is the agent's.
        signal.pthread_sigmask(signal.SIG_BLOCK, _AGENTS_SIGNALS)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child, measured by the tests through its socket
            code = 1
            try:
                for sig in _AGENTS_SIGNALS:
                    signal.signal(sig, signal.SIG_IGN)
                signal.pthread_sigmask(signal.SIG_UNBLOCK, _AGENTS_SIGNALS)
                ours.close()
                _serve(theirs, loop_handler, configure_logging)
                code = 0
            except BaseException as e:
                log.error("http_process_failed error=%s", type(e).__name__)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _AGENTS_SIGNALS)
        theirs.close()
        return cls(pid, ours)

    def server(self, sources: Sources, settings: HttpSettings, lost: Failed) -> ProcessServer:
        """A server run by the process, answering from ``sources``; ``lost`` if it dies."""
        self._sources, self._on_lost = sources, lost
        return ProcessServer(self, settings)

    def publish_status(self, body: bytes) -> None:
        """The status board's newest body: the process serves it from now on."""
        self._status = body
        if self._writer is not None and not self.lost:
            self._writer.write(_frame(("status", body)))

    def publish_log(self, config: LogConfig) -> None:
        """A reloaded ``log`` section, for what the process logs itself."""
        if self._writer is not None and not self.lost:
            self._writer.write(_frame(("log", config)))

    async def request(self, *message: Any) -> Any:
        """One control message and its reply; raises ``OSError`` as the process did."""
        async with self._control:
            writer = await self._connect()
            writer.write(_frame(message))
            await writer.drain()
            reply = await self._replies.get()
        match reply:
            case ("ok", value):
                return value
            case ("error", kind, errno):
                raise OSError(errno, f"http process: {kind}")
            case _:
                raise ProcessLost("the http process is gone")

    async def close(self) -> None:
        """Close our end, which ends the process, and reap it (killed after CLOSE_TIMEOUT)."""
        self._closing = True
        if self._writer is not None:
            self._writer.close()
        elif self._sock is not None:
            self._sock.close()
        if self._listener is not None:
            await self._listener
        await self._reap()

    async def _reap(self) -> None:
        """Wait for the process to exit (its socket closed); kill it after CLOSE_TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_TIMEOUT
        while not self._reaped():
            if loop.time() > deadline:
                log.error("http_process_stuck pid=%d action=kill", self.pid)
                os.kill(self.pid, signal.SIGKILL)
                deadline = math.inf
            await asyncio.sleep(0.02)

    def _reaped(self) -> bool:
        try:
            pid, _ = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            return True  # reaped already
        return pid != 0

    # -- the socket ----------------------------------------------------------------------

    async def _connect(self) -> asyncio.StreamWriter:
        if self.lost or self._sock is None:
            raise ProcessLost("the http process is gone")
        if self._writer is None:
            reader, writer = await asyncio.open_connection(sock=self._sock)
            self._writer = writer
            if self._status is not None:
                writer.write(_frame(("status", self._status)))
            self._listener = asyncio.create_task(self._listen(reader, writer), name="http-process")
        return self._writer

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "closed"
        try:
            while (message := await _receive(reader)) is not None:
                match message:
                    case ("ask", number, what):
                        writer.write(_frame(("answer", number, self._answer(what))))
                    case _:
                        self._replies.put_nowait(message)
        except Exception as e:  # whatever broke the conversation, the process is as good as gone
            reason = type(e).__name__
        finally:
            self.lost = True
            self._replies.put_nowait(("lost",))
            writer.close()
            if not self._closing:
                log.error("http_process_lost pid=%d reason=%s", self.pid, reason)
                await self._reap()  # its listeners are closed before the agent binds them
                if self._on_lost is not None:
                    self._on_lost(ProcessLost("the http process is gone"))

    def _answer(self, what: str) -> object:
        """The answer to one of the process's questions: metrics text, or a probe's reason."""
        sources = self._sources
        try:
            if sources is not None:
                match what:
                    case "metrics":
                        return sources.metrics_now()
                    case "health":
                        return sources.health()
                    case "ready":
                        return sources.ready()
        except Exception as e:  # a bug in a source: this request fails, the process stays
            log.error("http_answer_failed what=%s error=%s", what, type(e).__name__)
        return None if what == "metrics" else "internal_error"


class ProcessServer:
    """An :class:`HttpServer` that the serving process runs; the same interface."""

    def __init__(self, process: HttpProcess, settings: HttpSettings) -> None:
        self._process = process
        self.settings = settings
        self._ports: list[int] = []

    def takes(self, settings: HttpSettings) -> bool:
        return self.settings.takes(settings)

    async def update(self, settings: HttpSettings) -> None:
        if not self.takes(settings):
            raise ValueError("these settings need a new server")
        await self._process.request("update", settings)
        self.settings = settings

    @property
    def ports(self) -> list[int]:
        return list(self._ports)

    async def start(self) -> None:
        self._ports = list(await self._process.request("start", self.settings))

    async def close(self) -> None:
        self._ports = []
        with contextlib.suppress(ProcessLost):  # its listeners went with it
            await self._process.request("close")


# --- the serving process --------------------------------------------------------------


def _serve(sock: socket.socket, loop_handler: LoopHandler, configure: ConfigureLogging) -> None:
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(loop_handler)
        await _Relay(configure).run(sock)

    asyncio.run(main())


class _Relay:
    """The serving process: one :class:`HttpServer` at a time, answering as the agent says."""

    def __init__(self, configure_logging: ConfigureLogging) -> None:
        self._configure_logging = configure_logging
        self._status = b"{}"
        self._server: HttpServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the endpoints read (the Served protocol) ------------------------------------

    def status_body(self) -> bytes:
        return self._status

    async def metrics_text(self) -> bytes:
        try:
            text = await self._ask("metrics")
        except TimeoutError:
            text = None
        if not isinstance(text, bytes):
            raise web.HTTPServiceUnavailable(text="unresponsive\n")
        return text

    async def health_reason(self) -> str | None:
        return await self._reason("health")

    async def ready_reason(self) -> str | None:
        return await self._reason("ready")

    async def _reason(self, what: str) -> str | None:
        try:
            reason = await self._ask(what)
        except TimeoutError:
            return "unresponsive"
        return reason if isinstance(reason, str) else None

    async def _ask(self, what: str) -> object:
        assert self._writer is not None
        number = next(self._numbers)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._asks[number] = answer
        try:
            self._writer.write(_frame(("ask", number, what)))
            async with asyncio.timeout(ASK_TIMEOUT):
                return await answer
        finally:
            del self._asks[number]

    # -- the agent's messages ---------------------------------------------------------------

    async def run(self, sock: socket.socket) -> None:
        reader, self._writer = await asyncio.open_connection(sock=sock)
        try:
            while (message := await _receive(reader)) is not None:
                self._take(message)
        finally:
            for answer in self._asks.values():  # the agent is gone: nobody will answer
                if not answer.done():
                    answer.set_exception(TimeoutError())
            for task in list(self._tasks):
                await task
            if self._server is not None:
                await self._server.close()

    def _take(self, message: tuple[Any, ...]) -> None:
        match message:
            case ("status", bytes() as body):
                self._status = body
            case ("answer", int() as number, value):
                answer = self._asks.get(number)
                if answer is not None and not answer.done():
                    answer.set_result(value)
            case ("log", LogConfig() as config):
                self._configure_logging(config)
            case _:
                # A control message runs beside the reading: closing a server waits for
                # its requests, which may be waiting for an answer still to be read.
                task = asyncio.create_task(self._control(message))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _control(self, message: tuple[Any, ...]) -> None:
        assert self._writer is not None
        try:
            reply: tuple[Any, ...] = ("ok", await self._apply(message))
        except Exception as e:  # the agent raises it as an OSError: it waits for a reply
            reply = _error(e)
        self._writer.write(_frame(reply))

    async def _apply(self, message: tuple[Any, ...]) -> object:
        match message:
            case ("start", HttpSettings() as settings):
                if self._server is not None:
                    await self._server.close()
                self._server = None
                started = HttpServer(self, settings)
                await started.start()
                self._server = started
                return started.ports
            case ("update", HttpSettings() as settings) if self._server is not None:
                await self._server.update(settings)
            case ("close",):
                closing, self._server = self._server, None
                if closing is not None:
                    await closing.close()
            case _:
                raise OSError(0, "unknown request")
        return None
