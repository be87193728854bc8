"""Addresses and link state of a WireGuard interface, over rtnetlink (pyroute2).

Shared by the backends that must put addresses on an interface the agent owns.
Only what is missing is added; addresses already present (and any others an
operator put there) are left alone, so a repeated setup changes nothing.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Iterable

from nodeagent.core.backend import BackendError, InterfaceMissing

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def parse_addresses(addresses: Iterable[str]) -> list[IPInterface]:
    """Parse ``10.8.0.1/16``-style interface addresses; ValueError without the value."""
    out: list[IPInterface] = []
    for text in addresses:
        try:
            out.append(ipaddress.ip_interface(text))
        except ValueError:
            raise ValueError("interface address is not an IP address with a prefix") from None
    return out


def missing_addresses(
    want: Iterable[IPInterface], have: Iterable[IPInterface]
) -> list[IPInterface]:
    """The wanted addresses not already on the link (pure)."""
    present = set(have)
    return [a for a in want if a not in present]


def ensure_addresses_up(interface: str, addresses: Iterable[str], netns: str | None = None) -> int:
    """Add the missing ``addresses`` to ``interface`` and bring it up; returns how many were added.

    ``netns`` names the network namespace holding the link (None: this one).
    """
    # Only an interface the agent creates comes here: pyroute2 (some 20 MB of
    # imports) is not loaded by an agent that only manages existing interfaces.
    from pyroute2 import IPRoute

    want = parse_addresses(addresses)
    try:
        ipr = IPRoute(netns=netns) if netns else IPRoute()
    except OSError as e:
        raise BackendError(f"{interface}: cannot open rtnetlink ({e.strerror})") from None
    try:
        found = ipr.link_lookup(ifname=interface)
        if not found:
            raise InterfaceMissing(f"{interface}: no such link")
        index = int(found[0])
        have: list[IPInterface] = []
        for msg in ipr.get_addr(index=index):
            addr = msg.get_attr("IFA_ADDRESS")
            if addr is not None:
                have.append(ipaddress.ip_interface(f"{addr}/{msg['prefixlen']}"))
        todo = missing_addresses(want, have)
        for a in todo:
            ipr.addr("add", index=index, address=str(a.ip), prefixlen=a.network.prefixlen)
        ipr.link("set", index=index, state="up")
        log.debug("link_setup interface=%s added=%d", interface, len(todo))
        return len(todo)
    except InterfaceMissing:
        raise
    except Exception as e:
        # pyroute2 errors may quote the request (addresses): keep only the errno.
        code = getattr(e, "code", None) or getattr(e, "errno", None)
        raise BackendError(f"{interface}: address/link setup failed (error {code})") from None
    finally:
        ipr.close()
