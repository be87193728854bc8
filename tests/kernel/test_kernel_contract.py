"""KernelBackend on the real kernel module passes the backend contract, at scale too."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Iterator

import pytest
from pyroute2 import IPRoute

from nodeagent.core.backend import BackendError, InterfaceMissing
from nodeagent.core.model import InterfaceSetup, Peer, Plan
from nodeagent.core.reconcile import plan
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.netlink.backend import KernelBackend
from nodeagent.wireguard.uapi.text import clamp_private_key
from tests.contract import BackendContract, converge
from tests.peerdata import key, make_peers, wide_peer

from .conftest import delete_link, unique_name


class TestKernel(BackendContract):
    @pytest.fixture
    def backend(self, kernel_backend: KernelBackend) -> KernelBackend:
        return kernel_backend


def test_20000_peers_round_trip(kernel_backend: KernelBackend) -> None:
    desired = make_peers(20_000)
    wide = wide_peer(300)
    desired[wide.public_key] = wide
    p = converge(kernel_backend, desired)
    assert len(p.add) == 20_001
    # Another reader sees the same thing, and a second plan is empty.
    with KernelBackend(kernel_backend.interface) as other:
        assert plan(desired, other.read().peers).empty


def test_wg_tool_agrees(kernel_backend: KernelBackend) -> None:
    """An independent reader (wireguard-tools) sees exactly what we applied."""
    desired = make_peers(300)
    desired[wide_peer(300).public_key] = wide_peer(300)
    converge(kernel_backend, desired)
    out = subprocess.run(
        ["wg", "show", kernel_backend.interface, "allowed-ips"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    seen: dict[str, set[str]] = {}
    for line in out.splitlines():
        pk, _, ips = line.partition("\t")
        seen[pk] = set() if ips == "(none)" else set(ips.split())
    want = {
        base64.b64encode(k).decode(): {str(ip) for ip in p.allowed_ips} for k, p in desired.items()
    }
    assert seen == want


def test_missing_interface() -> None:
    backend = KernelBackend("wgabsent0")
    with pytest.raises(InterfaceMissing) as e:
        backend.read()
    with pytest.raises(InterfaceMissing):
        backend.apply(Plan(add=(Peer(key("x", 1)),)))
    backend.close()
    assert "wgabsent0" in str(e.value)


def test_refused_request_is_backend_error(kernel_backend: KernelBackend) -> None:
    # Not a wireguard link: the kernel refuses the genl request.
    name = unique_name("vek")
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="veth", peer=unique_name("vep"))
    try:
        ip = AllowedIP.parse("10.1.2.3/32")
        with KernelBackend(name) as other, pytest.raises(BackendError) as e:
            other.apply(Plan(add=(Peer(key("x", 1), frozenset({ip})),)))
        assert "10.1.2.3" not in str(e.value)
    finally:
        delete_link(name)
    # The other socket is unaffected.
    assert dict(kernel_backend.read().peers) == {}


def test_no_message_for_empty_plan(kernel_backend: KernelBackend) -> None:
    kernel_backend.apply(Plan())
    assert kernel_backend.messages_sent == 0


@pytest.fixture
def created_name() -> Iterator[str]:
    name = unique_name("wgs")
    yield name
    delete_link(name)


def test_setup_creates_and_is_idempotent(created_name: str) -> None:
    setup = InterfaceSetup(key("priv", 7), 51888, ("10.66.0.1/16", "fd00:66::1/64"))
    with KernelBackend(created_name) as backend:
        backend.setup(setup)
        device = backend.read()
        assert device.private_key == clamp_private_key(setup.private_key)
        assert device.listen_port == 51888
        addrs = subprocess.run(
            ["ip", "-o", "addr", "show", "dev", created_name], capture_output=True, text=True
        ).stdout
        assert "10.66.0.1/16" in addrs and "fd00:66::1/64" in addrs
        with IPRoute() as ipr:
            (link,) = ipr.get_links(ipr.link_lookup(ifname=created_name)[0])
            assert link["flags"] & 1  # IFF_UP
        # Peers survive a second setup, which sends nothing to WireGuard.
        desired = make_peers(20)
        converge(backend, desired)
        sent = backend.messages_sent
        backend.setup(setup)
        assert backend.messages_sent == sent
        assert dict(backend.read().peers) == desired


def test_presence_changes_when_the_link_is_recreated() -> None:
    name = unique_name()
    with IPRoute() as ipr:
        ipr.link("add", ifname=name, kind="wireguard")
    backend = KernelBackend(name)
    try:
        first = backend.presence()
        assert first is not None
        delete_link(name)
        assert backend.presence() is None
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="wireguard")
        assert backend.presence() not in (None, first)
    finally:
        backend.close()
        delete_link(name)
