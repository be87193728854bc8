"""One connection to an OpenVPN management interface: login, one reader, one command at a time.

:func:`connect` opens the unix socket or the loopback TCP port and logs in
(the password prompt ends without a newline; a server without a password
greets with ``>INFO`` at once). A :class:`Connection` then runs one reader
task that feeds the :class:`~nodeagent.openvpn.protocol.Parser`: replies go
to the one command in flight, every other event to ``on_event``. Commands are
sent one at a time and each waits for its ``SUCCESS:``/``ERROR:``; a command
that gets no answer in time breaks the connection, since replies could no
longer be matched to their commands.

Errors are :class:`ManagementError` with a fixed reason code, never text from
the socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from nodeagent.openvpn.protocol import (
    Event,
    Notification,
    Parser,
    PasswordPrompt,
    Reply,
    command,
)

__all__ = ["COMMAND_TIMEOUT", "Connection", "ManagementError", "connect", "open_stream"]

COMMAND_TIMEOUT = 10.0
LOGIN_TIMEOUT = 10.0
READ_CHUNK = 64 << 10


class ManagementError(Exception):
    """The management conversation failed; ``reason`` is a fixed code (``refused``, ...)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def open_stream(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Open ``address``: an absolute path (unix socket) or ``host:port`` / ``[v6]:port``."""
    try:
        if address.startswith("/"):
            return await asyncio.open_unix_connection(address, limit=READ_CHUNK)
        host, _, port = address.rpartition(":")
        return await asyncio.open_connection(host.strip("[]"), int(port), limit=READ_CHUNK)
    except FileNotFoundError:
        raise ManagementError("no_socket") from None
    except ConnectionRefusedError:
        raise ManagementError("refused") from None
    except OSError:
        raise ManagementError("unreachable") from None


class Connection:
    """A logged-in management connection; ``on_event`` gets every event but replies."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        on_event: Callable[[Event], None],
        *,
        command_timeout: float = COMMAND_TIMEOUT,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._on_event = on_event
        self._timeout = command_timeout
        self._parser = Parser()
        self._lock = asyncio.Lock()
        self._waiting: asyncio.Future[Reply] | None = None
        self._prompt = asyncio.Event()
        self._greeted = asyncio.Event()
        self._task = asyncio.create_task(self._read(), name="openvpn-reader")
        self.unexpected_replies = 0

    @property
    def closed(self) -> asyncio.Task[None]:
        """The reader task: done once the connection ended."""
        return self._task

    async def _read(self) -> None:
        try:
            while True:
                data = await self._reader.read(READ_CHUNK)
                if not data:
                    break
                for event in self._parser.feed(data):
                    self._dispatch(event)
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for event in self._parser.close():
                self._dispatch(event)
            waiting, self._waiting = self._waiting, None
            if waiting is not None and not waiting.done():
                waiting.set_exception(ManagementError("closed"))

    def _dispatch(self, event: Event) -> None:
        if isinstance(event, Reply):
            waiting, self._waiting = self._waiting, None
            if waiting is not None and not waiting.done():
                waiting.set_result(event)
            else:
                self.unexpected_replies += 1
            return
        if isinstance(event, PasswordPrompt):
            self._prompt.set()
            return
        if isinstance(event, Notification) and event.kind == "INFO":
            self._greeted.set()
        self._on_event(event)

    async def login(self, password: bytes | None, timeout: float = LOGIN_TIMEOUT) -> None:
        """Answer the password prompt if there is one; ManagementError if refused."""
        prompt = asyncio.ensure_future(self._prompt.wait())
        greeted = asyncio.ensure_future(self._greeted.wait())
        try:
            await asyncio.wait(
                [prompt, greeted, self._task], timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            prompt.cancel()
            greeted.cancel()
        if self._prompt.is_set():
            if password is None:
                raise ManagementError("password_required")
            if b"\n" in password or b"\r" in password:
                raise ManagementError("password_unusable")
            self._prompt.clear()
            reply = await self._send(password + b"\n")
            if not reply.ok:
                raise ManagementError("password_refused")
        elif not self._greeted.is_set():
            raise ManagementError("closed" if self._task.done() else "no_greeting")

    async def command(self, *words: str | int) -> Reply:
        """Send one command (arguments quoted) and wait for its reply."""
        return await self._send(command(*words))

    async def _send(self, line: bytes) -> Reply:
        async with self._lock:
            if self._task.done():
                raise ManagementError("closed")
            loop = asyncio.get_running_loop()
            waiting: asyncio.Future[Reply] = loop.create_future()
            self._waiting = waiting
            try:
                self._writer.write(line)
                await self._writer.drain()
                async with asyncio.timeout(self._timeout):
                    return await asyncio.shield(waiting)
            except TimeoutError:
                self.close()
                raise ManagementError("timeout") from None
            except OSError:
                self.close()
                raise ManagementError("closed") from None
            finally:
                if self._waiting is waiting:
                    self._waiting = None
                if not waiting.done():
                    waiting.cancel()  # the caller went: nobody is left to read its outcome

    def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(Exception):
            self._writer.close()

    async def wait_closed(self) -> None:
        self.close()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()


async def connect(
    address: str,
    password: bytes | None,
    on_event: Callable[[Event], None],
    *,
    command_timeout: float = COMMAND_TIMEOUT,
) -> Connection:
    """Open and log in; ManagementError (with a reason code) if either fails."""
    reader, writer = await open_stream(address)
    conn = Connection(reader, writer, on_event, command_timeout=command_timeout)
    try:
        await conn.login(password)
    except BaseException:
        await conn.wait_closed()
        raise
    return conn
