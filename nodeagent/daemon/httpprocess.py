"""The HTTP endpoints in a process of their own, forked before the agent starts.

A reconcile pass of 60,000 peers keeps a worker thread busy for most of a
second; in one interpreter the event loop then waits for the GIL after each
socket call (a convoy): with 200 connections, ``/status`` p99 was 460 ms.
The serving process never runs a pass: it waits for a CPU, not a lock.

- ``/status`` is served from the newest body the agent's status board
  rendered, which it writes to memory both processes share
  (:class:`~nodeagent.daemon.statusslot.StatusSlot`): a request never waits
  for the agent, and a new body wakes nobody.
- ``/metrics``, ``/healthz`` and ``/readyz`` are asked of the agent per
  request: the metrics are current, and ``/healthz`` answers for the agent's
  loop (``unresponsive`` if it does not answer in ``httprelay.ASK_TIMEOUT``).
- The agent starts, updates and closes the one server by request and reply
  (:class:`ProcessServer` has :class:`HttpServer`'s interface), so a reload, a
  bind error or a bad certificate behave as in one process.

``nodeagent run`` forks with :meth:`HttpProcess.fork` after the imports, while
there is no event loop or thread: the processes share those pages. The child
ignores SIGTERM, SIGINT and SIGHUP (the agent's) and exits when the agent's end
of the socket closes, at its stop or its death. If the child dies, the agent's
HTTP service fails and the supervisor's restart serves in the agent itself.
The process's side, and the messages between, are in :mod:`.httprelay`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import os
import signal
import socket
from typing import Any

from nodeagent.config.agent import LogConfig
from nodeagent.daemon.httprelay import (
    ConfigureLogging,
    LoopHandler,
    ProcessLost,
    frame,
    receive,
    serve,
)
from nodeagent.daemon.service import Failed
from nodeagent.daemon.statusslot import StatusSlot
from nodeagent.publish.http import HttpSettings, Sources

log = logging.getLogger(__name__)

__all__ = ["HttpProcess", "ProcessLost", "ProcessServer"]

#: How long the agent's stop waits for the process to exit before it kills it.
CLOSE_TIMEOUT = 10.0
_AGENTS_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class HttpProcess:
    """The agent's end of the serving process."""

    def __init__(self, pid: int, sock: socket.socket, slot: StatusSlot) -> None:
        self.pid = pid
        self._sock: socket.socket | None = sock
        self._slot = slot
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
        slot = StatusSlot()
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
                serve(theirs, slot, loop_handler, configure_logging)
                code = 0
            except BaseException as e:
                log.error("http_process_failed error=%s", type(e).__name__)
            finally:
                os._exit(code)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _AGENTS_SIGNALS)
        theirs.close()
        return cls(pid, ours, slot)

    def server(self, sources: Sources, settings: HttpSettings, lost: Failed) -> ProcessServer:
        """A server run by the process, answering from ``sources``; ``lost`` if it dies."""
        self._sources, self._on_lost = sources, lost
        return ProcessServer(self, settings)

    def publish_status(self, body: bytes) -> None:
        """The status board's newest body: the process serves it from now on.

        Written to the shared slot; a body too large for it (none the board
        renders) is sent as a message, and the emptied slot says so.
        """
        fits = self._slot.fits(body)
        self._slot.write(body if fits else b"")
        self._status = None if fits else body
        if not fits and self._writer is not None and not self.lost:
            self._writer.write(frame(("status", body)))

    def publish_log(self, config: LogConfig) -> None:
        """A reloaded ``log`` section, for what the process logs itself."""
        if self._writer is not None and not self.lost:
            self._writer.write(frame(("log", config)))

    async def request(self, *message: Any) -> Any:
        """One control message and its reply; raises ``OSError`` as the process did."""
        async with self._control:
            writer = await self._connect()
            writer.write(frame(message))
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
                writer.write(frame(("status", self._status)))
            self._listener = asyncio.create_task(self._listen(reader, writer), name="http-process")
        return self._writer

    async def _listen(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reason = "closed"
        try:
            while (message := await receive(reader)) is not None:
                match message:
                    case ("ask", number, what):
                        writer.write(frame(("answer", number, self._answer(what))))
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
