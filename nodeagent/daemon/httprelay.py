"""The serving process: the HTTP endpoints, answered as the agent says, and the wire between.

The agent forks it (:class:`~nodeagent.daemon.httpprocess.HttpProcess`) and
talks to it over a socket pair: messages are pickled tuples with a length
prefix, and both ends are this program. ``/status`` is read from the shared
:class:`~nodeagent.daemon.statusslot.StatusSlot`; ``/metrics`` and the probes
are asked of the agent per request.
"""

from __future__ import annotations

import asyncio
import itertools
import pickle
import socket
import struct
from collections.abc import Callable, Mapping
from typing import Any

from aiohttp import web

from nodeagent.config.agent import LogConfig
from nodeagent.daemon.memory import SERVING_THRESHOLD, tune_malloc
from nodeagent.daemon.statusslot import StatusSlot
from nodeagent.publish.http import HttpServer, HttpSettings

__all__ = [
    "ASK_TIMEOUT",
    "ConfigureLogging",
    "LoopHandler",
    "ProcessLost",
    "error_reply",
    "frame",
    "receive",
    "serve",
]

#: How long the serving process waits for the agent's answer to a probe or a scrape.
ASK_TIMEOUT = 5.0
_FRAME = struct.Struct("!I")

LoopHandler = Callable[[asyncio.AbstractEventLoop, Mapping[str, Any]], None]
ConfigureLogging = Callable[[LogConfig], None]


class ProcessLost(ConnectionError):
    """The serving process is gone."""


def frame(message: tuple[Any, ...]) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(data)) + data


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
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


def error_reply(e: Exception) -> tuple[Any, ...]:
    # The type and errno only: an exception's text quotes addresses and files.
    return ("error", type(e).__name__, getattr(e, "errno", None))


def serve(
    sock: socket.socket, slot: StatusSlot, loop_handler: LoopHandler, configure: ConfigureLogging
) -> None:
    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(loop_handler)
        await _Relay(configure, slot).run(sock)

    tune_malloc(SERVING_THRESHOLD)
    asyncio.run(main())


class _Relay:
    """The serving process: one :class:`HttpServer` at a time, answering as the agent says."""

    def __init__(self, configure_logging: ConfigureLogging, slot: StatusSlot) -> None:
        self._configure_logging = configure_logging
        self._slot = slot
        self._status = b"{}"  # a body too large for the slot, sent as a message
        self._server: HttpServer | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._asks: dict[int, asyncio.Future[Any]] = {}
        self._numbers = itertools.count()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what the endpoints read (the Served protocol) ------------------------------------

    def status_body(self) -> bytes:
        return self._slot.read() or self._status

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
            self._writer.write(frame(("ask", number, what)))
            async with asyncio.timeout(ASK_TIMEOUT):
                return await answer
        finally:
            del self._asks[number]

    # -- the agent's messages ---------------------------------------------------------------

    async def run(self, sock: socket.socket) -> None:
        reader, self._writer = await asyncio.open_connection(sock=sock)
        try:
            while (message := await receive(reader)) is not None:
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
            reply = error_reply(e)
        self._writer.write(frame(reply))

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
