"""One OpenVPN instance under the agent: connect, authenticate logins, end sessions, reconnect.

:meth:`Instance.run` connects (reading the management password file each
time), answers ``>HOLD`` with ``hold release`` every time, decides every
``>CLIENT:CONNECT``/``REAUTH`` through the shared
:class:`~nodeagent.openvpn.auth.Authenticator`, and keeps the client ids of
the sessions it saw start in a :class:`~nodeagent.openvpn.sessions.SessionTable`
that lives as long as the connection: when OpenVPN restarts or the socket
vanishes, the table goes, and the instance reconnects with the one backoff.

:meth:`Instance.end` asks for every session of some usernames to end: each
client id it knows gets ``client-kill CID HALT``; then, when OpenVPN counts
more clients than the table holds (``load-stats``, an aggregate), ``kill
<username>`` ends those it never saw start (before the agent's own restart, or
before this connection), since OpenVPN runs with ``username-as-common-name``.
Usernames asked for while disconnected wait for the next connection, and each
new connection starts by ending the users ``on_connect`` names (the feed's
expired users).

Never sent: ``status``, ``bytecount``, ``log on`` (per-client addresses, byte
counts and times). Nothing here logs a username, a password or an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nodeagent.config.model import OpenVPNInstanceConfig
from nodeagent.config.secretfile import read_secret
from nodeagent.core.backoff import Backoff, Retries
from nodeagent.openvpn.auth import Authenticator
from nodeagent.openvpn.client import Connection, ManagementError, connect
from nodeagent.openvpn.protocol import (
    BlockCut,
    ClientAuth,
    ClientDisconnect,
    ClientEstablished,
    Event,
    Hold,
    LineTooLong,
    ProtocolViolation,
)
from nodeagent.openvpn.sessions import SessionTable

__all__ = ["DENY_REASON", "RECONNECT_BACKOFF", "Hooks", "Instance"]

log = logging.getLogger(__name__)

RECONNECT_BACKOFF = Backoff(base=1.0, cap=30.0)
DENY_REASON = "authentication failed"
MAX_PENDING_ENDS = 100_000
_KILLED = re.compile(r"(\d{1,9}) client\(s\) killed")
_NCLIENTS = re.compile(r"\bnclients=(\d{1,9})\b")


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass
class Hooks:
    """What an instance reports: outcomes by kind, sessions ended, its state changing."""

    auth: Callable[[str], None] = lambda outcome: None  # accepted | refused | overloaded
    ended: Callable[[int], None] = lambda n: None
    changed: Callable[[], None] = lambda: None
    protocol_error: Callable[[str], None] = lambda kind: None
    on_connect: Callable[[], Iterable[str]] = lambda: ()
    is_valid: Callable[[str, datetime], bool] = lambda name, now: True


class Instance:
    """Keeps one management connection and does the instance's work over it."""

    def __init__(
        self,
        config: OpenVPNInstanceConfig,
        authenticator: Authenticator,
        hooks: Hooks | None = None,
        *,
        backoff: Backoff = RECONNECT_BACKOFF,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.config = config
        self._auth = authenticator
        self._hooks = hooks or Hooks()
        self._retries = Retries(backoff)
        self._clock = clock
        self.up = False
        self.failing = False  # the last connection attempt failed
        self.connections = 0
        self.table = SessionTable()
        # Ordered set of usernames whose sessions must end, oldest first.
        self._to_end: dict[str, None] = {}
        self._wake = asyncio.Event()
        self._conn: Connection | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._logged: set[str] = set()

    @property
    def label(self) -> str:
        return self.config.interface

    def end(self, usernames: Iterable[str]) -> None:
        """End every session of ``usernames`` as soon as the connection allows."""
        for name in usernames:
            self._to_end.pop(name, None)
            self._to_end[name] = None
        while len(self._to_end) > MAX_PENDING_ENDS:
            del self._to_end[next(iter(self._to_end))]
        if self._to_end:
            self._wake.set()

    @property
    def pending_ends(self) -> int:
        return len(self._to_end)

    # -- the connection's life --------------------------------------------------------

    async def run(self) -> None:
        """Connect, work, reconnect with backoff; ends only when cancelled."""
        while True:
            try:
                await self._connected()
            except ManagementError as e:
                self._down(e.reason)
            except (OSError, ValueError) as e:
                # The password file: unreadable, or refused for its mode.
                self._down(f"password_file_{type(e).__name__}")
            delay = self._retries.failed()
            await asyncio.sleep(delay)

    def _down(self, reason: str) -> None:
        was_up, self.up = self.up, False
        self.failing = True
        log.warning(
            "openvpn_unreachable interface=%s reason=%s was_up=%d",
            self.label,
            reason,
            int(was_up),
        )
        self._hooks.changed()

    async def _connected(self) -> None:
        password = None
        if self.config.password_file is not None:
            password = await asyncio.to_thread(read_secret, self.config.password_file)
        self.table = SessionTable()  # client ids restart: nothing from before is trusted
        self._logged = set()
        conn = await connect(self.config.management, password, self._event)
        self._conn = conn
        try:
            self.up, self.failing = True, False
            self.connections += 1
            self._retries.succeeded()
            log.info("openvpn_connected interface=%s", self.label)
            self._hooks.changed()
            # A held OpenVPN that greeted before >HOLD reached us: release costs nothing.
            self._spawn(self._hold_release())
            self.end(self._hooks.on_connect())
            ender = asyncio.create_task(self._ender(conn), name=f"openvpn-end-{self.label}")
            try:
                await asyncio.wait([conn.closed, ender], return_when=asyncio.FIRST_COMPLETED)
            finally:
                ender.cancel()
                # Its ManagementError is the connection's end; anything else is a bug, raised.
                with contextlib.suppress(asyncio.CancelledError, ManagementError):
                    await ender
            raise ManagementError("closed")
        finally:
            self._conn = None
            for task in list(self._tasks):
                task.cancel()
            self._tasks.clear()
            self.table = SessionTable()
            await conn.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events -----------------------------------------------------------------------

    def _event(self, event: Event) -> None:
        if isinstance(event, ClientAuth):
            self._spawn(self._authenticate(event))
        elif isinstance(event, ClientEstablished):
            name = event.username or event.common_name
            if name is not None and self.table.user(event.cid) is None:
                self.table.add(event.cid, name)
        elif isinstance(event, ClientDisconnect):
            self.table.drop(event.cid)
        elif isinstance(event, Hold):
            self._spawn(self._hold_release())
        elif isinstance(event, LineTooLong | BlockCut | ProtocolViolation):
            kind = {LineTooLong: "line_too_long", BlockCut: "block_cut"}.get(
                type(event), "violation"
            )
            if kind not in self._logged:
                # Once per kind and connection: a stream of bad lines must not flood the journal.
                self._logged.add(kind)
                log.warning("openvpn_protocol_error interface=%s kind=%s", self.label, kind)
            self._hooks.protocol_error(kind)

    async def _hold_release(self) -> None:
        conn = self._conn
        if conn is None:
            return
        with contextlib.suppress(ManagementError):
            await conn.command("hold", "release")

    async def _authenticate(self, ev: ClientAuth) -> None:
        decision = await self._auth.decide(ev.username, ev.password)
        name = ev.username or ""
        # The account may have expired while its scrypt ran: the loop's view decides.
        accepted = decision.accepted and self._hooks.is_valid(name, self._clock())
        conn = self._conn
        if conn is None:
            return
        try:
            if accepted:
                reply = await conn.command("client-auth-nt", ev.cid, ev.kid)
                if reply.ok:
                    self.table.add(ev.cid, name)
            else:
                await conn.command("client-deny", ev.cid, ev.kid, DENY_REASON)
        except ManagementError:
            return
        outcome = "accepted" if accepted else "overloaded" if decision.overloaded else "refused"
        self._hooks.auth(outcome)
        log.debug(
            "openvpn_auth interface=%s outcome=%s reauth=%d", self.label, outcome, int(ev.reauth)
        )

    # -- ending sessions --------------------------------------------------------------

    async def _ender(self, conn: Connection) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Sessions this connection never saw start exist when OpenVPN counts more
            # clients than the table holds (load-stats: an aggregate, nothing per client).
            blind = await self._clients(conn) > len(self.table)
            while self._to_end:
                name = next(iter(self._to_end))
                ended = await self._end_one(conn, name, blind)
                # Asked again meanwhile: it stays (moved to the back by end()).
                if next(iter(self._to_end), None) == name:
                    del self._to_end[name]
                if ended:
                    self._hooks.ended(ended)
                    log.info("openvpn_sessions_ended interface=%s sessions=%d", self.label, ended)

    async def _clients(self, conn: Connection) -> int:
        reply = await conn.command("load-stats")
        m = _NCLIENTS.search(reply.text) if reply.ok else None
        # Unknown: assume there are sessions the table lacks.
        return int(m[1]) if m else 1 << 30

    async def _end_one(self, conn: Connection, name: str, blind: bool) -> int:
        known = 0
        for cid in self.table.cids(name):
            # HALT: the client stops instead of coming back to be refused.
            reply = await conn.command("client-kill", cid, "HALT")
            self.table.drop(cid)
            known += int(reply.ok)
        if not blind:
            return known
        # By common name (= username): the sessions this connection never saw start.
        # It may count the ones just killed again, which are still on their way out.
        reply = await conn.command("kill", name)
        m = _KILLED.search(reply.text) if reply.ok else None
        return max(known, int(m[1]) if m else 0)
