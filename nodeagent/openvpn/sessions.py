"""Who is connected, and who must go: pure, in memory only.

:class:`SessionTable` maps one connection's client ids to usernames (client
ids restart with every management connection, so a table lives as long as
one). :class:`Roster` follows the feed's users over time and says which
usernames lost their right to a session (expired, or left the feed) since it
last looked, and when the next one will.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from nodeagent.core.model import User

__all__ = ["Roster", "SessionTable", "next_expiry", "valid_names"]


class SessionTable:
    """Client id → username for the sessions one connection saw start."""

    def __init__(self) -> None:
        self._user: dict[int, str] = {}
        self._cids: dict[str, set[int]] = {}

    def __len__(self) -> int:
        return len(self._user)

    def __repr__(self) -> str:
        return f"SessionTable(sessions={len(self._user)})"

    def add(self, cid: int, username: str) -> None:
        self.drop(cid)
        self._user[cid] = username
        self._cids.setdefault(username, set()).add(cid)

    def drop(self, cid: int) -> None:
        name = self._user.pop(cid, None)
        if name is not None:
            cids = self._cids[name]
            cids.discard(cid)
            if not cids:
                del self._cids[name]

    def user(self, cid: int) -> str | None:
        return self._user.get(cid)

    def cids(self, username: str) -> list[int]:
        return sorted(self._cids.get(username, ()))

    def usernames(self) -> set[str]:
        return set(self._cids)


def valid_names(users: Mapping[str, User], now: datetime) -> set[str]:
    """The usernames that may hold a session at ``now``."""
    return {n for n, u in users.items() if u.expires_at is None or u.expires_at > now}


def next_expiry(users: Mapping[str, User], now: datetime) -> datetime | None:
    future = [u.expires_at for u in users.values() if u.expires_at is not None]
    later = [t for t in future if t > now]
    return min(later) if later else None


class Roster:
    """The feed's users as they change, and the usernames each change (or the clock) ends."""

    def __init__(self) -> None:
        self.users: Mapping[str, User] = {}
        self._valid: set[str] = set()
        # Invalid usernames still in the feed whose end was already asked for.
        self._ended: set[str] = set()

    def offer(self, users: Mapping[str, User], now: datetime) -> set[str]:
        """Take a new set of users; the usernames that must lose their sessions."""
        self.users = users
        return self.check(now)

    def check(self, now: datetime) -> set[str]:
        """The usernames that became invalid since the last look (expired, or left the feed)."""
        valid = valid_names(self.users, now)
        invalid_listed = set(self.users) - valid
        ending = ((self._valid | invalid_listed) - valid) - self._ended
        self._valid = valid
        self._ended = (self._ended | ending) & invalid_listed
        return ending

    def invalid_listed(self, now: datetime) -> set[str]:
        """Expired usernames still in the feed: a new connection ends their sessions."""
        return set(self.users) - valid_names(self.users, now)

    def is_valid(self, username: str, now: datetime) -> bool:
        user = self.users.get(username)
        return user is not None and (user.expires_at is None or user.expires_at > now)

    def next_expiry(self, now: datetime) -> datetime | None:
        return next_expiry(self.users, now)
