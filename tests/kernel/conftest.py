"""Fixtures of the kernel tier: fresh kernel WireGuard links, inside the test VM.

Run as ``python -m tests.kernel.vm -- python -m pytest -q tests/kernel``. Where
the wireguard module is absent (the host), every test FAILS rather than skips:
a tier that silently skips is a tier that never runs.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator

import pytest
from pyroute2 import IPRoute

from nodeagent.core.backend import BackendError
from nodeagent.wireguard.netlink.backend import KernelBackend
from nodeagent.wireguard.netlink.conversation import resolve_family
from tests.kernel.vm import in_throwaway_vm

_names = itertools.count()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kernel/" in str(item.path).replace("\\", "/"):
            item.add_marker(pytest.mark.kernel)


@pytest.fixture(autouse=True, scope="session")
def _kernel_prerequisites() -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tier cannot run: not root", pytrace=False)
    try:
        resolve_family()
    except BackendError as e:
        pytest.fail(
            f"kernel tier cannot run ({e}); run it as "
            "`python -m tests.kernel.vm -- python -m pytest -q tests/kernel`",
            pytrace=False,
        )


def unique_name(prefix: str = "wgk") -> str:
    """An interface name no other test (or test run) uses at the same time."""
    return f"{prefix}{os.getpid() % 10000}x{next(_names)}"[:15]


def delete_link(name: str) -> None:
    """Test-only cleanup: the agent itself never deletes a link."""
    with IPRoute() as ipr:
        for index in ipr.link_lookup(ifname=name):
            ipr.link("del", index=index)


@pytest.fixture
def link_factory() -> Iterator[Callable[[], str]]:
    """Makes fresh, empty kernel WireGuard links; all are deleted after the test.

    Except inside the throw-away test VM, where they are left to its power-off:
    the kernel removes a link's peers one RCU grace period at a time
    (``netif_napi_del`` synchronizes per peer), and under TCG deleting a link
    of 20,000 peers took 340 s, two thirds of this tier's time. These links
    are never brought up, so they hold no port another test could want.
    """
    made: list[str] = []

    def make() -> str:
        name = unique_name()
        with IPRoute() as ipr:
            ipr.link("add", ifname=name, kind="wireguard")
        made.append(name)
        return name

    yield make
    if in_throwaway_vm():
        return
    for name in made:
        delete_link(name)


@pytest.fixture
def wg_link(link_factory: Callable[[], str]) -> str:
    return link_factory()


@pytest.fixture
def kernel_backend(wg_link: str) -> Iterator[KernelBackend]:
    backend = KernelBackend(wg_link)
    yield backend
    backend.close()
