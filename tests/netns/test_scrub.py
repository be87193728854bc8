"""Endpoint scrubbing against real wireguard-go: active sessions untouched, idle endpoints wiped.

The configuration refuses ``scrub_idle_after`` below 180 s, because a session in
use only re-handshakes every 120 s. The active-session test therefore runs at
that real floor (its client handshook seconds ago, so it must be left alone).
The idle test calls the library with a short threshold to see the mechanics in
seconds rather than minutes; it says nothing about what is safe in production.
"""

from __future__ import annotations

import base64
import time

from nodeagent.core.model import Peer, Plan
from nodeagent.core.routes import AllowedIP
from nodeagent.lab.tunnel import TunnelPair
from nodeagent.privacy.scrub import scrub_once
from nodeagent.wireguard.uapi.backend import UapiBackend
from tests.peerdata import key

REAL_FLOOR = 180.0


def client_peer(pair: TunnelPair) -> Peer:
    return Peer(
        pair.client_public,
        frozenset({AllowedIP.parse(f"{pair.client_tunnel_ip}/32")}),
        key("psk", 1),
    )


def set_psk_on_client(pair: TunnelPair) -> None:
    pair.client.uapi_set(
        [f"public_key={pair.server_public.hex()}", f"preshared_key={key('psk', 1).hex()}"]
    )


def endpoints(pair: TunnelPair) -> dict[str, str]:
    """``wg show endpoints`` on the server: base64 key -> endpoint text ("(none)" when wiped)."""
    out = pair.server_ns.run(["wg", "show", pair.server.name, "endpoints"]).stdout
    return dict(line.split("\t", 1) for line in out.splitlines() if "\t" in line)


def client_endpoint(pair: TunnelPair) -> str:
    return endpoints(pair)[base64.b64encode(pair.client_public).decode()]


def connect(pair: TunnelPair) -> UapiBackend:
    backend = UapiBackend(pair.server.name, pair.server.socket_path)
    set_psk_on_client(pair)
    backend.apply(Plan(add=(client_peer(pair),)))
    assert pair.ping(count=3, interval=0.2).returncode == 0
    assert client_endpoint(pair).startswith(pair.veth.ip_b), "handshake should set an endpoint"
    return backend


def test_active_session_loses_no_packet_across_scrub_passes(tunnel_pair: TunnelPair) -> None:
    pair = tunnel_pair
    backend = connect(pair)
    # A second peer that holds an endpoint but never handshook: idle at any
    # threshold, so every pass really removes and re-adds a peer beside the
    # active one.
    stale = Peer(key("stale", 0), frozenset({AllowedIP.parse("10.99.0.77/32")}))
    backend.apply(Plan(add=(stale,)))
    pair.server.uapi_set([f"public_key={stale.public_key.hex()}", "endpoint=192.0.2.77:40000"])

    before = backend.read().peers

    ping = pair.ping_popen(count=600, interval=0.01)
    passes = scrubbed = 0
    while ping.poll() is None:
        scrubbed += scrub_once(backend, REAL_FLOOR)
        passes += 1
        # The stale peer needs its endpoint back for the next pass to have work.
        pair.server.uapi_set([f"public_key={stale.public_key.hex()}", "endpoint=192.0.2.77:40000"])
        time.sleep(0.05)
    out, _ = ping.communicate(timeout=30)

    assert "600 packets transmitted, 600 received" in out, out
    assert passes >= 10
    assert scrubbed == passes, "the stale peer is re-added on every pass, the client never"
    assert client_endpoint(pair).startswith(pair.veth.ip_b), "an active client is never touched"
    assert backend.read().peers == before, "re-added peers keep their exact configuration"


def test_idle_endpoint_disappears_and_client_reconnects(tunnel_pair: TunnelPair) -> None:
    pair = tunnel_pair
    # The handshake (what idleness is measured from) happens during connect()'s ping,
    # after this moment and before its last packet.
    handshake_not_before = time.monotonic()
    backend = connect(pair)

    before = backend.read().peers
    idle_after, interval = 3.0, 0.5  # library level only; the config floor is 180 s

    last_packet = time.monotonic()  # connect()'s ping has just returned
    assert scrub_once(backend, idle_after) == 0, "a client that just talked is not idle"
    assert client_endpoint(pair) != "(none)"
    gone_after: float | None = None
    gone_at = 0.0
    while time.monotonic() - last_packet < idle_after + interval + 10:
        scrub_once(backend, idle_after)
        if client_endpoint(pair) == "(none)":
            gone_at = time.monotonic()
            gone_after = gone_at - last_packet
            break
        time.sleep(interval)
    assert gone_after is not None, "the idle client's endpoint was never wiped"
    print(
        f"\nlast packet -> endpoint gone: {gone_after:.2f}s "
        f"(idle_after={idle_after}s, interval={interval}s)"
    )
    assert gone_at - handshake_not_before >= idle_after, "never wiped before it was idle"
    assert gone_after <= idle_after + interval + 1.0
    assert backend.read().peers == before, "same key, preshared key and routes"
    latest = pair.server_ns.run(["wg", "show", pair.server.name, "latest-handshakes"]).stdout
    assert latest.split()[-1] == "0", "the handshake time is wiped too"

    # The client still holds a session the server forgot; WireGuard recovers
    # by a new handshake within REKEY_TIMEOUT + KEEPALIVE (about 15 s).
    again = pair.ping(count=60, interval=0.5, wait=1)
    assert " 0 received" not in again.stdout, again.stdout
    assert client_endpoint(pair).startswith(pair.veth.ip_b)
