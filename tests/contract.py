"""The contract every WireGuard backend passes: the fake, wireguard-go and the kernel module.

A subclass provides the ``backend`` fixture (an empty interface). Each test
walks a sequence of desired states and checks after every step that the state
read back equals the desired state exactly, and that planning again is empty.
"""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from nodeagent.core.backend import Backend
from nodeagent.core.model import Peer, Plan
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP

from .peerdata import key, make_peers, v4, wide_peer


def converge(backend: Backend, desired: Mapping[bytes, Peer]) -> Plan:
    p = plan(desired, backend.read().peers)
    backend.apply(p)
    got = dict(backend.read().peers)
    assert len(got) == len(desired)
    assert got == dict(desired), "read-back differs from desired state"
    assert plan(desired, got).empty
    return p


class BackendContract:
    @pytest.fixture
    def backend(self) -> Backend:
        raise NotImplementedError

    def test_presence_is_steady_while_the_interface_lives(self, backend: Backend) -> None:
        first = backend.presence()
        assert first is not None
        converge(backend, make_peers(3))
        assert backend.presence() == first

    def test_empty_interface_reads_empty(self, backend: Backend) -> None:
        assert dict(backend.read().peers) == {}
        backend.apply(Plan())
        assert dict(backend.read().peers) == {}

    def test_lifecycle_2000_peers(self, backend: Backend) -> None:
        desired = make_peers(2000)
        wide = wide_peer(300)
        desired[wide.public_key] = wide
        p = converge(backend, desired)
        assert len(p.add) == 2001

        # Change allowed IPs of 200 peers, including the wide one.
        keys = sorted(desired)
        for i, k in enumerate(keys[:200]):
            old = desired[k]
            desired[k] = Peer(k, frozenset({v4(i, 11), v4(i, 12)}), old.preshared_key)
        desired[wide.public_key] = wide_peer(300, shift=7)
        p = converge(backend, desired)
        assert len(p.update) == 201 and not p.add and not p.remove

        # Change some preshared keys, drop others, add one where there was none.
        for i, k in enumerate(keys[200:500]):
            old = desired[k]
            new_psk = None if i % 2 else key("psk2", i)
            desired[k] = Peer(k, old.allowed_ips, new_psk)
        p = converge(backend, desired)
        assert p.update and all(u.allowed_ips is None for u in p.update)

        # Remove 700 peers and add 50 new ones in the same plan.
        for k in keys[1000:1700]:
            del desired[k]
        desired.update(make_peers(50, tag="late", v4_base=13, v6_base="fd00:13"))
        p = converge(backend, desired)
        assert len(p.remove) == 700 and len(p.add) == 50

        # The same state again sends nothing.
        assert plan(desired, backend.read().peers).empty

    def test_allowed_ip_moves_between_peers(self, backend: Backend) -> None:
        a, b = key("move", 1), key("move", 2)
        ip = AllowedIP.parse("10.9.0.7/32")
        converge(backend, {a: Peer(a, frozenset({ip})), b: Peer(b)})
        converge(backend, {a: Peer(a), b: Peer(b, frozenset({ip}))})
        # Move the address to a brand-new peer while removing its old owner.
        c = key("move", 3)
        converge(backend, {a: Peer(a), c: Peer(c, frozenset({ip}))})

    def test_peer_without_allowed_ips(self, backend: Backend) -> None:
        a = key("bare", 1)
        converge(backend, {a: Peer(a)})
        converge(backend, {a: Peer(a, preshared_key=key("psk", 5))})
        converge(backend, {})

    def test_config_digest_is_that_of_a_read_and_ignores_peer_order(self, backend: Backend) -> None:
        desired = make_peers(40)
        converge(backend, desired)
        digest = backend.config_digest()
        assert digest is not None
        assert backend.read().digest == digest
        assert backend.config_digest() == digest  # nothing changed: the same again
        # The same peers again, added in the reverse order (the kernel lists them so).
        backend.apply(Plan(remove=tuple(desired)))
        assert backend.config_digest() != digest
        backend.apply(Plan(add=tuple(reversed(desired.values()))))
        assert dict(backend.read().peers) == desired
        assert backend.config_digest() == digest

    def test_config_digest_follows_each_kind_of_change(self, backend: Backend) -> None:
        desired = make_peers(30)
        converge(backend, desired)
        digest = backend.config_digest()
        keys = sorted(desired)
        psk_less = next(k for k in keys if desired[k].preshared_key is None)
        changes = {
            "a peer removed": {k: p for k, p in desired.items() if k != keys[0]},
            "a route changed": {**desired, keys[1]: Peer(keys[1], (v4(7, 11),), None)},
            "a preshared key added": {
                **desired,
                psk_less: Peer(psk_less, desired[psk_less].allowed_ips, key("psk", 77)),
            },
            "a peer added": {**desired, key("extra", 1): Peer(key("extra", 1), (v4(1, 12),))},
        }
        seen = {digest}
        for what, changed in changes.items():
            converge(backend, changed)
            now = backend.config_digest()
            assert now is not None and now not in seen, what
            assert backend.read().digest == now, what
            seen.add(now)
            converge(backend, desired)
            assert backend.config_digest() == digest, what
