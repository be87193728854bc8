"""UapiBackend on a real wireguard-go passes the backend contract, and fails cleanly."""

from __future__ import annotations

import pytest

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.core.model import InterfaceSetup, Peer, Plan
from nodeagent.lab.netns import Namespace
from nodeagent.lab.tunnel import Lab
from nodeagent.wireguard.uapi.backend import UapiBackend, exchange
from nodeagent.wireguard.uapi.text import clamp_private_key
from tests.contract import BackendContract
from tests.peerdata import key


class TestWireguardGo(BackendContract):
    @pytest.fixture
    def backend(self, wggo: tuple[str, str, Namespace]) -> UapiBackend:
        name, socket_path, ns = wggo
        return UapiBackend(name, socket_path, netns=ns.name)


def test_missing_socket_is_interface_missing() -> None:
    backend = UapiBackend("wgnone0", "/var/run/wireguard/nodeagent-absent.sock")
    with pytest.raises(InterfaceMissing) as e:
        backend.read()
    assert "nodeagent-absent" not in str(e.value)
    with pytest.raises(InterfaceMissing):
        backend.apply(Plan(add=(Peer(key("x", 1)),)))
    with pytest.raises(InterfaceMissing):
        backend.setup(InterfaceSetup(key("priv", 1), 51820))


def test_setup_sets_key_port_addresses(wggo: tuple[str, str, Namespace]) -> None:
    name, socket_path, ns = wggo
    backend = UapiBackend(name, socket_path, netns=ns.name)
    setup = InterfaceSetup(key("priv", 2), 51999, ("10.77.0.1/16", "fd00:77::1/64"))
    backend.setup(setup)
    device = backend.read()
    assert (
        device.private_key == clamp_private_key(setup.private_key) and device.listen_port == 51999
    )
    addrs = ns.run(["ip", "-o", "addr", "show", "dev", name]).stdout
    assert "10.77.0.1/16" in addrs and "fd00:77::1/64" in addrs
    assert "UP" in ns.run(["ip", "link", "show", name]).stdout
    # Again: nothing differs, nothing is sent and nothing fails.
    sent: list[bytes] = []

    def counting(path: str, request: bytes) -> str:
        sent.append(request)
        return exchange(path, request)

    UapiBackend(name, socket_path, netns=ns.name, exchange_fn=counting).setup(setup)
    assert [r for r in sent if r.startswith(b"set=")] == []


def test_refused_transaction_is_backend_error(wggo: tuple[str, str, Namespace], lab: Lab) -> None:
    name, socket_path, ns = wggo
    backend = UapiBackend(name, socket_path, netns=ns.name)
    good = Peer(key("ok", 1))
    backend.apply(Plan(add=(good,)))
    # A second daemon in the same namespace holds the port: wireguard-go refuses it.
    holder = lab.wireguard_go(ns, "wgh")
    holder.uapi_set(["listen_port=51777"])
    with pytest.raises(BackendError) as e:
        backend.setup(InterfaceSetup(key("priv", 3), 51777))
    assert "EADDRINUSE" in str(e.value)
    assert "51777" not in str(e.value)
    # The daemon still answers and kept its peer.
    assert set(backend.read().peers) == {good.public_key}
