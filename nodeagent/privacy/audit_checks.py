"""The audit's checks: pure functions from facts gathered on a host to :class:`Finding` values.

Each ``*_findings`` function takes what :mod:`nodeagent.privacy.audit_host`
read (file texts with their host paths, a few settings, the logging chains of
the rulesets) and decides; none touches the file system or runs a command.
OpenVPN's own checks are in :mod:`nodeagent.privacy.audit_openvpn`.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import yaml

from nodeagent.config.units import parse_duration
from nodeagent.privacy.audit_report import Finding

if TYPE_CHECKING:
    from nodeagent.privacy.netfilter import Chain

__all__ = [
    "DEFAULT_CONFIG",
    "DYNDBG",
    "MAX_LINGER",
    "AgentConfigFacts",
    "ConntrackFacts",
    "HostFile",
    "JournaldFacts",
    "NetfilterFacts",
    "agent_config_findings",
    "conntrack_findings",
    "dynamic_debug_findings",
    "journald_findings",
    "netfilter_findings",
    "wg_quick_findings",
]

DEFAULT_CONFIG = "/etc/nodeagent/config.yaml"
#: The longest a client's IP may linger after it goes quiet before the audit objects.
MAX_LINGER = 300.0
_SCRUB_FLOOR = 180.0
DYNDBG = "/sys/kernel/debug/dynamic_debug/control"


class HostFile(NamedTuple):
    """A file read from the host tree: its path on the host (for messages) and its text."""

    where: str
    text: str


@dataclass(frozen=True, slots=True)
class JournaldFacts:
    """journald's configuration files in the order it reads them (drop-ins last), readable ones."""

    files: Sequence[HostFile]
    #: Whether /var/log/journal is a directory (``Storage=auto`` then keeps logs on disk).
    journal_dir: bool


@dataclass(frozen=True, slots=True)
class ConntrackFacts:
    """The live conntrack settings (None: unreadable), the boot-time sysctl files, the loggers."""

    acct: str | None
    log_invalid: str | None
    sysctl_files: Sequence[HostFile]
    #: Host paths of the connection loggers' configuration files that exist.
    loggers: Sequence[str]


@dataclass(frozen=True, slots=True)
class NetfilterFacts:
    """The logging chains of each ruleset read (in order), and the ruleset commands that failed."""

    chains: Mapping[str, Collection[Chain]]
    failed: Sequence[str]


@dataclass(frozen=True, slots=True)
class AgentConfigFacts:
    """The agent's configuration file as named with ``-c``, and its text (None: unreadable)."""

    config: str
    text: str | None


# --- journald -------------------------------------------------------------------


def _journald_storage(files: Sequence[HostFile]) -> tuple[str, str]:
    """The effective ``Storage=`` and the file that set it (drop-ins override the main file)."""
    storage, source = "auto", "(default)"
    for f in files:
        section = ""
        for raw in f.text.splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
            elif section == "Journal" and line.startswith("Storage="):
                storage, source = line.partition("=")[2].strip().lower(), f.where
    return storage, source


def journald_findings(facts: JournaldFacts) -> list[Finding]:
    storage, source = _journald_storage(facts.files)
    if storage == "persistent" or (storage == "auto" and facts.journal_dir):
        where = source if storage == "persistent" else "/var/log/journal"
        return [
            Finding(
                "journald-persistent",
                where,
                "journald keeps logs on disk, including those of the VPN daemons",
                "set Storage=volatile in /etc/systemd/journald.conf.d/no-logs.conf, "
                "restart systemd-journald, then remove /var/log/journal",
            )
        ]
    return []


# --- wg-quick -------------------------------------------------------------------

_SAVECONFIG = re.compile(r"^\s*SaveConfig\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def wg_quick_findings(files: Sequence[HostFile]) -> list[Finding]:
    """Over wg-quick's configuration files (``/etc/wireguard/*.conf``)."""
    return [
        Finding(
            "wg-quick-saveconfig",
            where,
            "SaveConfig = true writes every peer's current endpoint to this file "
            "when the interface goes down",
            "remove the SaveConfig line (or set it to false) and delete Endpoint "
            "lines of client peers from the file",
        )
        for where, text in files
        if any(m.group(1).lower() == "true" for m in _SAVECONFIG.finditer(text))
    ]


# --- kernel ---------------------------------------------------------------------


def dynamic_debug_findings(control: str | None) -> list[Finding]:
    """Over the text of the dynamic debug control file (None: not there, or unreadable)."""
    for line in (control or "").splitlines():
        if "[wireguard]" not in line:
            continue
        # "<file>:<line> [module]<function> =<flags> "<format>""
        flags = next((tok for tok in line.split() if tok.startswith("=")), "=_")
        if flags not in ("=_", "="):
            return [
                Finding(
                    "wireguard-dynamic-debug",
                    DYNDBG,
                    "WireGuard debug messages are enabled; they name each peer's endpoint "
                    "on every handshake",
                    f"echo 'module wireguard -p' > {DYNDBG}, and remove "
                    "wireguard.dyndbg from the kernel command line and modprobe.d",
                )
            ]
    return []


def _sysctl_settings(files: Sequence[HostFile]) -> Iterator[tuple[str, str, str]]:
    """(file, key, value) of each sysctl setting in the boot-time configuration."""
    for where, text in files:
        for raw in text.splitlines():
            line = raw.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            k, _, v = line.partition("=")
            yield where, k.strip().replace("/", "."), v.strip()


def conntrack_findings(facts: ConntrackFacts) -> list[Finding]:
    out: list[Finding] = []
    acct_fix = (
        "sysctl -w net.netfilter.nf_conntrack_acct=0 and remove it from /etc/sysctl.d "
        "(and do not load nf_conntrack with acct=1)"
    )
    if (facts.acct or "").strip() == "1":
        out.append(
            Finding(
                "conntrack-acct",
                "/proc/sys/net/netfilter/nf_conntrack_acct",
                "conntrack counts bytes and packets per connection, i.e. per user",
                acct_fix,
            )
        )
    for f, k, v in _sysctl_settings(facts.sysctl_files):
        if k == "net.netfilter.nf_conntrack_acct" and v == "1":
            out.append(
                Finding("conntrack-acct", f, "turns on per-connection byte accounting", acct_fix)
            )
    if (facts.log_invalid or "0").strip() not in ("0", ""):
        out.append(
            Finding(
                "conntrack-log-invalid",
                "/proc/sys/net/netfilter/nf_conntrack_log_invalid",
                "conntrack logs packets it considers invalid, with their addresses",
                "sysctl -w net.netfilter.nf_conntrack_log_invalid=0",
            )
        )
    # A logger bound in nf_log records nothing by itself: netfilter_findings
    # looks for the rules that send packets to it.
    out += [
        Finding(
            "connection-logger",
            daemon,
            "a connection-tracking logger (conntrackd/ulogd) is installed",
            "purge the package (apt purge conntrackd ulogd2) and its logs",
        )
        for daemon in facts.loggers
    ]
    return out


# --- netfilter logging rules ----------------------------------------------------


def netfilter_findings(facts: NetfilterFacts) -> list[Finding]:
    """One finding naming every chain that logs, one for the ruleset commands that failed.

    A failed command is its own finding: the rules it would show are unknown.
    """
    out: list[Finding] = []
    where = "; ".join(
        f"{source} ({', '.join(sorted(str(c) for c in chains))})"
        for source, chains in facts.chains.items()
        if chains
    )
    if where:
        out.append(
            Finding(
                "netfilter-log",
                where,
                "packet-logging rules (LOG/NFLOG targets, nftables log statements) write "
                "the addresses and ports of matching packets to the kernel log or a logger",
                "delete those rules from the live ruleset (nft -a list ruleset, then nft "
                "delete rule FAMILY TABLE CHAIN handle N; iptables -D CHAIN RULENUM) and "
                "from the rulesets loaded at boot (/etc/nftables.conf, "
                "/etc/iptables/rules.v4, /etc/iptables/rules.v6)",
            )
        )
    if facts.failed:
        out.append(
            Finding(
                "netfilter-unreadable",
                ", ".join(facts.failed),
                "the live ruleset could not be listed, so packet-logging rules cannot be ruled out",
                "run nodeagent audit as root (listing the ruleset needs CAP_NET_ADMIN)",
            )
        )
    return out


# --- the agent itself -----------------------------------------------------------


def agent_config_findings(facts: AgentConfigFacts) -> list[Finding]:
    config = facts.config
    fix_config = f"set privacy.scrub_idle_after: 180s and privacy.scrub_interval: 30s in {config}"
    if facts.text is None:
        return [
            Finding(
                "agent-config-missing",
                config,
                "the agent's configuration is not readable, so scrubbing cannot be verified",
                f"pass the right file with -c, or install it at {DEFAULT_CONFIG}",
            )
        ]
    try:
        doc = yaml.safe_load(facts.text)
    except yaml.YAMLError:
        doc = None
    if not isinstance(doc, dict):
        return [
            Finding(
                "agent-config-invalid",
                config,
                "the agent's configuration is not a YAML mapping",
                "run nodeagent check-config -c FILE and fix what it reports",
            )
        ]
    privacy = doc.get("privacy") or {}
    if not isinstance(privacy, dict):
        privacy = {}
    extra = sorted(set(privacy) - {"scrub_idle_after", "scrub_interval"})
    if extra or any(_off(privacy.get(k, "30s")) for k in ("scrub_idle_after", "scrub_interval")):
        return [
            Finding(
                "scrub-disabled",
                config,
                "endpoint scrubbing is disabled: idle clients' IP addresses stay in memory",
                fix_config,
            )
        ]
    try:
        idle = parse_duration(str(privacy.get("scrub_idle_after", "180s")))
        interval = parse_duration(str(privacy.get("scrub_interval", "30s")))
    except ValueError:
        return [
            Finding(
                "scrub-config-invalid",
                config,
                "privacy.scrub_idle_after or privacy.scrub_interval does not parse",
                fix_config,
            )
        ]
    out: list[Finding] = []
    if idle + interval > MAX_LINGER:
        out.append(
            Finding(
                "scrub-too-slow",
                config,
                f"an idle client's IP lingers up to scrub_idle_after + scrub_interval, "
                f"more than {MAX_LINGER:.0f}s",
                fix_config,
            )
        )
    if 0 < idle < _SCRUB_FLOOR:
        out.append(
            Finding(
                "scrub-too-eager",
                config,
                "scrub_idle_after below 180s would cut live sessions (the agent refuses it)",
                fix_config,
            )
        )
    return out


def _off(value: object) -> bool:
    """Whether a scrub setting means "never" (zero, false, off), which the agent refuses."""
    return value in (None, False, 0) or str(value).strip().lower() in (
        "0", "0s", "0ms", "off", "false", "no", "never", "disabled",
    )  # fmt: skip
