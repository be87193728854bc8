"""A reload as a pure diff: which services take new settings from a new configuration.

:func:`plan_reload` compares two :class:`Settings` (a configuration with the
secrets it names, as read when it was loaded) and says what changes; the agent
applies the plan in one place. A secret file whose content changed is a
change even when the configuration text is not: SIGHUP means "look again".
"""

from __future__ import annotations

from dataclasses import dataclass

from nodeagent.config.agent import Config, LogConfig
from nodeagent.publish.http import HttpSettings
from nodeagent.publish.push import PushSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """A configuration and the secrets it names, read at one moment."""

    config: Config
    http: HttpSettings | None
    push: PushSettings | None

    @classmethod
    def read(cls, config: Config) -> Settings:
        """Read the token, certificate and push secret ``config`` names; OSError/ValueError."""
        http = None if config.http is None else HttpSettings.read(config.http)
        push = None if config.push is None else PushSettings.read(config.push, config.node_name)
        return cls(config, http, push)


@dataclass(frozen=True, slots=True)
class ReloadPlan:
    """What a reload changes; the reconciler and the file feed always look again."""

    log: LogConfig | None  # the new ``log`` section, None if unchanged
    node_name: str | None  # the new name, None if unchanged
    http: bool
    load: bool
    push: bool
    feed: bool  # the feed section changed: a new follower
    privacy: bool
    # Interfaces whose settings changed or that went: their backends are replaced.
    interfaces: frozenset[str]

    @property
    def replaced(self) -> list[str]:
        """The services that get new settings, for the journal."""
        flags = {"http": self.http, "load": self.load, "push": self.push, "feed": self.feed}
        return [name for name, changed in flags.items() if changed]


def plan_reload(old: Settings, new: Settings) -> ReloadPlan:
    o, n = old.config, new.config
    old_ifaces = {c.name: c for c in o.wireguard.interfaces}
    new_ifaces = {c.name: c for c in n.wireguard.interfaces}
    return ReloadPlan(
        log=n.log if n.log != o.log else None,
        node_name=n.node_name if n.node_name != o.node_name else None,
        http=new.http != old.http,
        load=n.load != o.load,
        push=new.push != old.push,
        feed=n.feed != o.feed,
        privacy=n.privacy != o.privacy,
        interfaces=frozenset(name for name, c in old_ifaces.items() if new_ifaces.get(name) != c),
    )
