"""The host audit against the no-logs promise: each check, and :func:`audit` running them all.

A check gathers facts from the host tree below ``root``
(:mod:`nodeagent.privacy.audit_host`: files, journald's configuration, sysctl
settings, the rulesets) and decides over them
(:mod:`nodeagent.privacy.audit_checks`, pure). Each returns :class:`Finding`
values (:mod:`nodeagent.privacy.audit_report`) that name the file or setting,
say what it records, and how to fix it. Findings never quote file contents,
so the audit's own output cannot carry an address or a name it found.

On the live host (``root`` is ``/``) the netfilter check also lists the live
ruleset with ``nft`` and ``iptables-save``; on any other tree it reads only
the rulesets saved there.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from nodeagent.privacy import audit_checks as checks
from nodeagent.privacy import audit_host as host
from nodeagent.privacy.audit_checks import DEFAULT_CONFIG
from nodeagent.privacy.audit_openvpn import check_openvpn
from nodeagent.privacy.audit_report import Finding
from nodeagent.privacy.netfilter import Runner, run_command

__all__ = ["CHECKS", "DEFAULT_CONFIG", "Finding", "audit"]


def check_journald(root: Path) -> list[Finding]:
    return checks.journald_findings(host.journald_facts(root))


def check_wg_quick(root: Path) -> list[Finding]:
    return checks.wg_quick_findings(host.wg_quick_files(root))


def check_dynamic_debug(root: Path) -> list[Finding]:
    return checks.dynamic_debug_findings(host.dynamic_debug_control(root))


def check_conntrack(root: Path) -> list[Finding]:
    return checks.conntrack_findings(host.conntrack_facts(root))


def check_netfilter_log(root: Path, run: Runner | None = None) -> list[Finding]:
    """One finding naming every chain with a LOG/NFLOG target or an nftables ``log`` statement.

    ``run`` lists the live ruleset; without it only the rulesets saved under
    ``root`` are read. A ruleset command that fails (the audit not run as
    root, a timeout) is its own finding: the rules it would show are unknown.
    """
    return checks.netfilter_findings(host.netfilter_facts(root, run))


def check_agent_config(root: Path, config: str = DEFAULT_CONFIG) -> list[Finding]:
    return checks.agent_config_findings(host.agent_config_facts(root, config))


Check = Callable[[Path], list[Finding]]
CHECKS: tuple[Check, ...] = (
    check_journald,
    check_openvpn,
    check_wg_quick,
    check_dynamic_debug,
    check_conntrack,
)


def audit(
    root: Path | str = "/", config: str = DEFAULT_CONFIG, run: Runner | None = None
) -> list[Finding]:
    """Every finding on the host tree at ``root``, the agent's configuration last.

    ``run`` lists live rulesets; by default commands run only when ``root`` is
    this host's own root.
    """
    base = Path(root)
    if run is None and base.resolve() == Path("/"):
        run = run_command
    out: list[Finding] = []
    for check in CHECKS:
        out += check(base)
    out += check_netfilter_log(base, run)
    out += check_agent_config(base, config)
    return out
