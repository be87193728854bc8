"""The scrubber on the real kernel module: an idle peer's endpoint is wiped, its config kept."""

from __future__ import annotations

import subprocess

from nodeagent.core.model import format_key
from nodeagent.core.reconcile import plan
from nodeagent.privacy.scrub import scrub_once
from nodeagent.wireguard.netlink.backend import KernelBackend
from tests.contract import converge
from tests.peerdata import make_peers


def endpoints(link: str) -> dict[str, str]:
    out = subprocess.run(
        ["wg", "show", link, "endpoints"], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("\t") for line in out.splitlines())


def test_idle_endpoints_are_wiped_and_config_kept(kernel_backend: KernelBackend) -> None:
    link = kernel_backend.interface
    desired = make_peers(50)
    converge(kernel_backend, desired)
    keys = [format_key(k) for k in sorted(desired)][:5]
    for i, k in enumerate(keys):
        # An endpoint with no handshake ever: what a client that went quiet leaves behind.
        subprocess.run(["wg", "set", link, "peer", k, "endpoint", f"127.0.0.1:{40000 + i}"])
    assert sum(e != "(none)" for e in endpoints(link).values()) == 5

    scrubbed = scrub_once(kernel_backend, 180.0)

    assert scrubbed == 5
    assert all(e == "(none)" for e in endpoints(link).values())
    assert plan(desired, kernel_backend.read().peers).empty
    # Nothing idle with an endpoint is left: a second pass does nothing.
    assert scrub_once(kernel_backend, 180.0) == 0
