"""Leak test on wireguard-go: clients use the tunnel; nothing the agent emits names them.

The harness (a misbehaving feed server, a refusing collector, the search of
everything the agent emitted) is :mod:`tests.leaks`, shared with the kernel
tier. A companion test plants a leak and shows the search finds it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.lab.netns import genkey, veth_pair
from nodeagent.lab.tunnel import Lab
from nodeagent.wireguard.uapi.backend import UapiBackend
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
)
from tests.peerdata import key


def build_site(lab: Lab) -> Site:
    """A wireguard-go server and three clients on their own veth links: two over IPv4, one IPv6."""
    server_ns = lab.namespace("nls")
    server = lab.wireguard_go(server_ns, "wgs")
    server_private, server_public = genkey()
    server.uapi_set([f"private_key={server_private.hex()}", f"listen_port={PORT}"])
    server.up(f"{SERVER_TUNNEL}/24")
    clients: list[Client] = []
    for i in range(3):
        ns = lab.namespace("nlc")
        a, b, a6, b6 = client_plan(i)
        veth_pair(server_ns, ns, address_a=f"{a}/30", address_b=f"{b}/30", name_a=f"vc{i}")
        if i == 2:  # this one reaches the server over IPv6
            a, b = a6, b6
            server_ns.ip("addr", "add", f"{a}/64", "dev", f"vc{i}", "nodad")
            ns.ip("addr", "add", f"{b}/64", "dev", "veth0", "nodad")
        wg = lab.wireguard_go(ns, "wgc")
        private, public = genkey()
        psk = key("leak-psk", i) if i != 1 else None
        tunnel_ip = f"10.77.0.{10 + i}"
        lines = [f"private_key={private.hex()}", f"public_key={server_public.hex()}"]
        if psk:
            lines.append(f"preshared_key={psk.hex()}")
        lines += [f"endpoint={bracketed(a)}:{PORT}", "replace_allowed_ips=true",
                  "allowed_ip=10.77.0.0/24"]  # fmt: skip
        wg.uapi_set(lines)
        wg.up(f"{tunnel_ip}/32")
        ns.ip("route", "add", "10.77.0.0/24", "dev", wg.name)
        clients.append(Client(ns, public, psk, b, tunnel_ip))
    return Site(
        interface=server.name,
        config_entry=(
            f"{{name: {server.name}, backend: userspace, uapi_socket: {server.socket_path}}}"
        ),
        backend=UapiBackend(server.name, server.socket_path),
        show_endpoints=lambda: server_ns.run(["wg", "show", server.name, "endpoints"]).stdout,
        clients=clients,
    )


def test_nothing_the_agent_emits_names_a_client(lab: Lab, tmp_path: Path) -> None:
    assert_nothing_leaked(run_agent(build_site(lab), tmp_path, AGENT, {}))


@pytest.mark.parametrize("mode", ["fd", "disk"])
def test_a_planted_leak_is_found(lab: Lab, tmp_path: Path, mode: str) -> None:
    """A raw write to stderr / a debug file of the endpoints: the search must find it."""
    run = run_agent(build_site(lab), tmp_path, PLANTED, {"NODEAGENT_PLANT_LEAK": mode})
    hits = run.site.secrets().search(run.haystacks())
    assert any("endpoint" in h for h in hits), "the planted leak went unnoticed"
    print("\nplanted leak found:", *sorted(set(hits)), sep="\n  ")


@pytest.mark.parametrize(
    ("mode", "masked"),
    [("log", b"peer endpoint=[redacted]"), ("print", b"debug endpoint [redacted]")],
)
def test_a_planted_log_line_is_masked_by_redaction(
    lab: Lab, tmp_path: Path, mode: str, masked: bytes
) -> None:
    """The same leak through ``logging`` or ``print`` is caught by the second line of defence."""
    run = run_agent(build_site(lab), tmp_path, PLANTED, {"NODEAGENT_PLANT_LEAK": mode})
    assert masked in run.log
    assert run.site.secrets().search(run.haystacks()) == []
