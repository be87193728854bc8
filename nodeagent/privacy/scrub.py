"""Endpoint scrubbing: idle WireGuard peers are removed and re-added with the same configuration.

WireGuard keeps a peer's last endpoint (the client's IP address) and its last
handshake time for as long as the peer exists. Re-creating an idle peer wipes
both while keeping its key, preshared key and routes, so the client reconnects
as before the next time it sends.

The selection (``core.idle``) is pure. The shell (:func:`scrub_once`) asks a
backend for its idle peers and re-adds them. The backend finds them and their
configuration in one read of the interface, the same read on every pass: a
second read made only when someone went quiet would date that moment for
anyone who sees the backend's traffic or its debug log. Handshake times live
only in local variables of the backend's parser: they are read, compared and
dropped, never stored, logged or counted. Per-pass peer counts are not logged
either: "one peer went idle at 12:03" on a quiet server is an access time.
"""

from __future__ import annotations

import logging

from nodeagent.core.backend import Backend

log = logging.getLogger(__name__)


def scrub_once(backend: Backend, idle_after: float) -> int:
    """One scrub pass over one interface; returns how many peers were re-added.

    The count is for tests and for a cumulative metric, never for a log line.
    Every pass makes the same calls: one read, one re-add (which sends nothing
    when no peer is idle), one log line.
    """
    peers = backend.idle_peers(idle_after)
    backend.readd(peers)
    # The same line on every pass, without counts or durations (which grow
    # when someone went quiet): the log must not say when that was.
    log.debug("scrub_pass interface=%s", backend.interface)
    return len(peers)
