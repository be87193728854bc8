"""Fixtures of the netns tier: namespaces, wireguard-go interfaces and a tunnel pair.

A host that cannot run this tier (not root, no wireguard-go) FAILS every test
here rather than skipping: a tier that silently skips is a tier that never runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from nodeagent.lab.netns import Namespace, missing_prerequisites
from nodeagent.lab.tunnel import Lab, TunnelPair
from nodeagent.lab.tunnel import tunnel_pair as build_tunnel_pair
from nodeagent.lab.wireguard_go import WireguardGo


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/netns/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True, scope="session")
def _netns_prerequisites() -> None:
    missing = missing_prerequisites()
    if missing:
        pytest.fail("netns tier cannot run, missing: " + ", ".join(missing), pytrace=False)


@pytest.fixture
def lab() -> Iterator[Lab]:
    """A lab torn down after the test, whatever happened in it."""
    with Lab() as the_lab:
        yield the_lab


@pytest.fixture
def netns_factory(lab: Lab) -> Callable[[str], Namespace]:
    """Makes fresh namespaces (the argument is a short name prefix), removed after the test."""
    return lab.namespace


@pytest.fixture
def wggo(lab: Lab) -> Iterator[tuple[str, str, Namespace]]:
    """An empty wireguard-go interface in a fresh namespace: (name, socket path, namespace)."""
    ns = lab.namespace("naw")
    wg: WireguardGo = lab.wireguard_go(ns, "wgt")
    yield wg.name, wg.socket_path, ns


@pytest.fixture
def tunnel_pair(lab: Lab) -> TunnelPair:
    """Server and client namespaces on veth, wireguard-go in both; the server lacks the client."""
    return build_tunnel_pair(lab)
