"""The reference feed server's state: accounts in memory, versions, the delta history.

Every change makes a new version; the store keeps the last ``history`` of them
so that a client behind by a few versions gets a delta, not a full snapshot.
Versions are ``<epoch>.<n>`` with a random epoch per start, so a restarted
server answers 410 to every version of its previous life.

The store does not validate what it serves: it is the test double of a central
service, and tests need it to serve duplicate allowed IPs and the like. It
does no I/O; it builds the documents (full snapshot, delta) that
:mod:`nodeagent.central.feedserver` serves, and wakes the long-polls waiting
for a change.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import secrets
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["FeedStore", "Json"]

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
            async with asyncio.timeout(timeout):
                await waiter
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
