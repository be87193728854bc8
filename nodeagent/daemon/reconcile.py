"""One reconcile pass over every configured interface, and ``nodeagent sync --once``.

The pass is synchronous (a worker thread runs it): for each interface in the
configuration, the feed's peers are applied through its backend by
:func:`nodeagent.core.sync.sync_interface`. One interface's failure never keeps
the others from their pass; the failures come back together, each as a reason
an operator can act on.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from nodeagent.config.agent import Config, WireguardInterfaceConfig
from nodeagent.config.secretfile import read_private_key
from nodeagent.core.backend import Backend, BackendError
from nodeagent.core.model import DesiredState, InterfaceSetup, Peer
from nodeagent.core.sync import SyncOutcome, sync_interface
from nodeagent.feed.http import HttpFeed
from nodeagent.feed.snapshot import FeedError, read_file_feed
from nodeagent.wireguard import open_backend

log = logging.getLogger(__name__)

SYNC_ONCE_TIMEOUT = 120.0

BackendFactory = Callable[[WireguardInterfaceConfig], Backend]


def utcnow() -> datetime:
    return datetime.now(UTC)


def setup_for(cfg: WireguardInterfaceConfig) -> InterfaceSetup | None:
    """What ``create: true`` asks of an interface, with its private key read from disk."""
    if not cfg.create or cfg.private_key_file is None or cfg.listen_port is None:
        return None
    return InterfaceSetup(read_private_key(cfg.private_key_file), cfg.listen_port, cfg.addresses)


class SyncFailed(Exception):
    """Some interfaces failed a pass; ``failures`` maps each to what an operator can act on.

    ``outcomes`` are the interfaces that succeeded in the same pass.
    """

    def __init__(self, failures: Mapping[str, str], outcomes: list[SyncOutcome]) -> None:
        super().__init__("; ".join(f"{name}: {why}" for name, why in failures.items()))
        self.failures = dict(failures)
        self.outcomes = outcomes


def failure_reason(interface: str, e: BaseException) -> str:
    """The backend's own reason for a failure, without the interface name it repeats.

    BackendError texts are written by the backends and name no key or address.
    Any other exception's text is not ours: an OSError is reduced to its errno
    name, anything else to its type (it is a bug, and its text may quote data).
    """
    if isinstance(e, BackendError):
        text = str(e)
        return text.removeprefix(f"{interface}: ") or type(e).__name__
    if isinstance(e, OSError) and e.errno:
        return errno.errorcode.get(e.errno, str(e.errno))
    return type(e).__name__


def limit_reason(cfg: WireguardInterfaceConfig, limit: int | None) -> str:
    """Who refuses more peers, in the words an operator searches for."""
    who = "the kernel module" if cfg.backend == "kernel" else "wireguard-go"
    return f"{who} takes at most {limit:,} peers" if limit else f"{who} takes no more peers"


def reconcile_all(
    config: Config,
    backends: Mapping[str, Backend],
    desired: DesiredState,
    now: datetime,
    known: Mapping[str, Mapping[bytes, Peer]] | None = None,
    *,
    digests: Mapping[str, int] | None = None,
    repair_due: bool = False,
) -> list[SyncOutcome]:
    """One pass over every configured interface; ``SyncFailed`` after the rest ran if any failed.

    ``known`` maps interfaces to the peers they held after the previous pass;
    an interface without an entry is read back first. ``digests``: their
    configuration digests as those passes left them; with ``repair_due`` each
    interface's ``known`` is checked against it (``core.sync.plan_basis``).
    """
    outcomes: list[SyncOutcome] = []
    failures: dict[str, str] = {}
    for cfg in config.wireguard.interfaces:
        want = desired.wireguard.get(cfg.name)
        if want is None:
            # Absent from the feed is not "no peers": leave the interface as it is.
            log.warning("peer_sync skipped interface=%s reason=not_in_feed", cfg.name)
            continue
        try:
            outcomes.append(
                sync_interface(
                    backends[cfg.name],
                    want,
                    now,
                    config.feed.max_removal_ratio,
                    known=(known or {}).get(cfg.name),
                    digest=(digests or {}).get(cfg.name),
                    repair_due=repair_due,
                )
            )
        except Exception as e:  # one interface's failure never keeps the others from their pass
            failures[cfg.name] = failure_reason(cfg.name, e)
    if failures:
        raise SyncFailed(failures, outcomes)
    return outcomes


def sync_once(config: Config, backend_factory: BackendFactory = open_backend) -> list[SyncOutcome]:
    """``nodeagent sync --once``: one reconcile of every interface from the feed."""
    if config.feed.path is not None:
        desired, _ = read_file_feed(config.feed.path)
    else:
        desired = asyncio.run(_fetch_once(config))
    backends = {c.name: backend_factory(c) for c in config.wireguard.interfaces}
    try:
        for cfg in config.wireguard.interfaces:
            setup = setup_for(cfg)
            if setup is not None:
                backends[cfg.name].setup(setup)
        return reconcile_all(config, backends, desired, utcnow())
    finally:
        for backend in backends.values():
            backend.close()


async def _fetch_once(config: Config) -> DesiredState:
    async with HttpFeed(config.feed) as feed:
        try:
            # The client retries forever; a one-shot command must not.
            async with asyncio.timeout(SYNC_ONCE_TIMEOUT):
                return await feed.next(None)
        except TimeoutError:
            raise FeedError(
                f"no valid feed within {SYNC_ONCE_TIMEOUT:.0f}s "
                f"(errors: {dict(feed.stats.errors) or 'none'})"
            ) from None
