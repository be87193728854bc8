"""Traffic through a real wireguard-go tunnel while UapiBackend reconciles the server."""

from __future__ import annotations

import re
import threading

from nodeagent.core.model import Peer, Plan
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.wireguard.uapi.backend import UapiBackend, exchange
from tests.peerdata import key

CLIENT_IP = AllowedIP.parse("10.99.0.2/32")


class CountingBackend(UapiBackend):
    """A UapiBackend that records every request it sends to the socket."""

    def __init__(self, pair: TunnelPair) -> None:
        self.sent: list[bytes] = []
        super().__init__(pair.server.name, pair.server.socket_path, exchange_fn=self._count)

    def _count(self, path: str, request: bytes) -> str:
        self.sent.append(request)
        return exchange(path, request)

    def sets(self) -> int:
        return sum(r.startswith(b"set=") for r in self.sent)


def converge(backend: UapiBackend, desired: dict[bytes, Peer]) -> Plan:
    p = plan(desired, backend.read().peers)
    backend.apply(p)
    return p


def received(ping_output: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", ping_output)
    assert m, "no ping summary"
    return int(m.group(1)), int(m.group(2))


def test_tunnel_through_backend(tunnel_pair: TunnelPair) -> None:
    pair = tunnel_pair
    backend = CountingBackend(pair)
    client = Peer(pair.client_public, frozenset({CLIENT_IP}))
    other_key = key("unrelated", 1)
    other = Peer(other_key, frozenset({AllowedIP.parse("10.99.0.50/32")}))

    # Before the server knows the client, nothing gets through.
    assert pair.ping(count=1, wait=1).returncode != 0

    desired = {client.public_key: client, other_key: other}
    p = converge(backend, desired)
    assert len(p.add) == 2
    # The client retries its handshake only every 5 s (REKEY_TIMEOUT), so allow a few.
    result = pair.ping(count=3, wait=12)
    assert result.returncode == 0, result.stdout

    # Reconciling while traffic flows: the unchanged state sends nothing, and an
    # update of another peer does not disturb the client's session.
    ping = pair.ping_popen(count=300, interval=0.01)
    stop = threading.Event()
    empty_sends: list[int] = []
    try:
        shift = 0
        while ping.poll() is None:
            before = backend.sets()
            assert converge(backend, desired).empty
            empty_sends.append(backend.sets() - before)
            shift += 1
            desired[other_key] = Peer(
                other_key, frozenset({AllowedIP.parse(f"10.99.0.{50 + shift % 100}/32")})
            )
            assert len(converge(backend, desired).update) == 1
            stop.wait(0.05)
        out, _ = ping.communicate(timeout=30)
    finally:
        if ping.poll() is None:
            ping.kill()
            ping.communicate()
    assert empty_sends and set(empty_sends) == {0}
    assert ping.returncode == 0, out
    assert received(out) == (300, 300), out

    # Removing the client cuts it off.
    del desired[client.public_key]
    p = converge(backend, desired)
    assert p.remove == (client.public_key,)
    assert set(backend.read().peers) == {other_key}
    assert pair.ping(count=3, wait=1).returncode != 0
