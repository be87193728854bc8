"""Leak test on the kernel module: clients at known addresses use the tunnel; nothing names them.

The same harness as the netns tier (:mod:`tests.leaks`), with the server a
kernel WireGuard link that the agent itself creates (``create: true``) in the
VM's own namespace, and kernel WireGuard clients in namespaces of their own.
A planted leak shows the search can fail here too.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.lab.netns import genkey, run, unique_name
from nodeagent.lab.tunnel import Lab
from nodeagent.wireguard.netlink.backend import KernelBackend
from tests.kernel.conftest import delete_link
from tests.leaks import (
    AGENT,
    PLANTED,
    PORT,
    SERVER_TUNNEL,
    Client,
    Site,
    assert_nothing_leaked,
    bracketed,
    client_plan,
    run_agent,
    secret_file,
)
from tests.peerdata import key


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as the_lab:
        yield the_lab


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def build_site(lab: Lab, tmp_path: Path, server: str) -> Site:
    """Three kernel WireGuard clients, each on a veth link to this namespace: two IPv4, one IPv6.

    The server link ``server`` does not exist yet: the agent creates it.
    """
    keys = tmp_path / "keys"
    keys.mkdir()
    server_private, server_public = genkey()
    server_key = secret_file(keys / "server.key", b64(server_private))
    clients: list[Client] = []
    for i in range(3):
        ns = lab.namespace("nlk")
        a, b, a6, b6 = client_plan(i)
        near = unique_name("vk")
        run(["ip", "link", "add", near, "type", "veth", "peer", "name", "veth0", "netns", ns.name])
        run(["ip", "addr", "add", f"{a}/30", "dev", near])
        ns.ip("addr", "add", f"{b}/30", "dev", "veth0")
        if i == 2:  # this one reaches the server over IPv6
            a, b = a6, b6
            run(["ip", "addr", "add", f"{a}/64", "dev", near, "nodad"])
            ns.ip("addr", "add", f"{b}/64", "dev", "veth0", "nodad")
        run(["ip", "link", "set", near, "up"])
        ns.ip("link", "set", "veth0", "up")

        private, public = genkey()
        psk = key("leak-psk", i) if i != 1 else None
        tunnel_ip = f"10.77.0.{10 + i}"
        ns.ip("link", "add", "wgc", "type", "wireguard")
        argv = ["wg", "set", "wgc", "private-key", str(secret_file(keys / f"c{i}", b64(private)))]
        argv += ["peer", b64(server_public), "endpoint", f"{bracketed(a)}:{PORT}"]
        argv += ["allowed-ips", "10.77.0.0/24"]
        if psk:
            argv += ["preshared-key", str(secret_file(keys / f"c{i}.psk", b64(psk)))]
        ns.run(argv)
        ns.ip("addr", "add", f"{tunnel_ip}/32", "dev", "wgc")
        ns.ip("link", "set", "wgc", "up")
        ns.ip("route", "add", "10.77.0.0/24", "dev", "wgc")
        clients.append(Client(ns, public, psk, b, tunnel_ip))
    return Site(
        interface=server,
        config_entry=(
            f"{{name: {server}, backend: kernel, create: true, private_key_file: {server_key}, "
            f"listen_port: {PORT}, addresses: ['{SERVER_TUNNEL}/24']}}"
        ),
        backend=KernelBackend(server),
        show_endpoints=lambda: run(["wg", "show", server, "endpoints"]).stdout,
        clients=clients,
    )


@pytest.fixture
def site(lab: Lab, tmp_path: Path) -> Iterator[Site]:
    server = unique_name("wgk")
    the_site = build_site(lab, tmp_path, server)
    try:
        yield the_site
    finally:
        assert isinstance(the_site.backend, KernelBackend)
        the_site.backend.close()
        delete_link(server)  # the agent never deletes a link; the test does


def test_nothing_the_agent_emits_names_a_client(site: Site, tmp_path: Path) -> None:
    assert_nothing_leaked(run_agent(site, tmp_path, AGENT, {}))


def test_a_planted_leak_is_found(site: Site, tmp_path: Path) -> None:
    """A stray debug print of the endpoints: the search must find it on this tier too."""
    run_ = run_agent(site, tmp_path, PLANTED, {"NODEAGENT_PLANT_LEAK": "fd"})
    hits = run_.site.secrets().search(run_.haystacks())
    assert any("endpoint" in h for h in hits), "the planted leak went unnoticed"
    print("\nplanted leak found:", *sorted(set(hits)), sep="\n  ")
