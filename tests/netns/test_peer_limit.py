"""wireguard-go's peer limit, for real: what fits is applied, the rest is reported, not retried.

wireguard-go refuses the 65,537th peer of an interface (its MaxPeers) with
``errno=-22`` and keeps the ones before it. A feed of more peers than that
must not turn into the same failing transaction every pass.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from nodeagent.core.model import DesiredInterface, Plan
from nodeagent.core.sync import sync_interface
from nodeagent.lab.netns import Namespace
from nodeagent.wireguard import BackendError
from nodeagent.wireguard.uapi.backend import MAX_PEERS, UapiBackend
from tests.peerdata import make_peers

NOW = datetime(2026, 12, 1, tzinfo=UTC)


def test_what_fits_is_applied_and_the_rest_waits(wggo: tuple[str, str, Namespace]) -> None:
    name, sock, _ = wggo
    backend = UapiBackend(name, sock)
    desired = DesiredInterface(make_peers(MAX_PEERS + 64))
    out = sync_interface(backend, desired, NOW, 0.5)
    assert (out.added, out.held_additions, out.peer_count) == (MAX_PEERS, 64, MAX_PEERS)
    assert len(backend.read().peers) == MAX_PEERS
    # The next pass sends nothing: the same 64 wait, no failing transaction.
    again = sync_interface(backend, desired, NOW, 0.5, known=out.peers)
    assert (again.added, again.held_additions) == (0, 64)
    # The limit is wireguard-go's own: one more peer is refused with its errno.
    extra = next(p for k, p in desired.peers.items() if k not in out.peers)
    with pytest.raises(BackendError, match="EINVAL"):
        backend.apply(Plan(add=(extra,)))
