"""An in-memory WireGuard backend for the unit tier. It passes the same contract suite."""

from __future__ import annotations

from nodeagent.core.backend import DIGEST_MASK, InterfaceMissing
from nodeagent.core.model import Device, InterfaceSetup, Peer, Plan
from nodeagent.core.reconcile import apply_to


class FakeBackend:
    def __init__(self, interface: str = "wgfake0", *, exists: bool = True) -> None:
        self._interface = interface
        self.exists = exists
        self.peers: dict[bytes, Peer] = {}
        self.private_key: bytes | None = None
        self.listen_port = 0
        self.applied: list[Plan] = []
        self.fail_next_apply = False
        self.reads = 0
        self.digests = 0  # config_digest() calls
        self.max_peers: int | None = None
        self.incarnation = 1  # what presence() reports while the interface exists

    @property
    def interface(self) -> str:
        return self._interface

    def presence(self) -> int | None:
        return self.incarnation if self.exists else None

    def recreate(self) -> None:
        """As ``ip link del`` and a new link of the same name: empty, a new incarnation."""
        self.peers, self.private_key, self.listen_port = {}, None, 0
        self.incarnation += 1

    def read(self) -> Device:
        self.reads += 1
        if not self.exists:
            raise InterfaceMissing(f"{self._interface}: no such interface")
        return Device(self.private_key, self.listen_port, dict(self.peers), self._digest())

    def config_digest(self) -> int:
        self.digests += 1
        if not self.exists:
            raise InterfaceMissing(f"{self._interface}: no such interface")
        return self._digest()

    def _digest(self) -> int:
        # As the real ones: a sum of each peer's hash, whatever their order.
        total = hash((self.private_key, self.listen_port))
        for k, p in self.peers.items():
            total += hash((k, p.allowed_ips, p.preshared_key))
        return total & DIGEST_MASK

    def apply(self, plan: Plan) -> None:
        if not self.exists:
            raise InterfaceMissing(f"{self._interface}: no such interface")
        if self.fail_next_apply:
            self.fail_next_apply = False
            raise InterfaceMissing(f"{self._interface}: injected failure")
        self.applied.append(plan)
        # The kernel's behaviour: an allowed IP given to one peer leaves any other.
        for peer in plan.add:
            self._steal(peer.public_key, peer.allowed_ips)
        for u in plan.update:
            if u.allowed_ips is not None:
                self._steal(u.public_key, u.allowed_ips)
        self.peers = apply_to(self.peers, plan)

    def _steal(self, owner: bytes, ips: tuple[object, ...]) -> None:
        taken = set(ips)
        for k, p in list(self.peers.items()):
            if k != owner and not taken.isdisjoint(p.allowed_ips):
                kept = tuple(ip for ip in p.allowed_ips if ip not in taken)
                self.peers[k] = Peer(k, kept, p.preshared_key)

    def setup(self, setup: InterfaceSetup) -> None:
        self.exists = True
        self.private_key = setup.private_key
        self.listen_port = setup.listen_port

    def close(self) -> None:
        pass
