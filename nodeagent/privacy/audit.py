"""Checks a host tree against the no-logs promise. Every check reads below ``root``.

Each check returns :class:`Finding` values that name the file or setting, say
what it records, and how to fix it. Findings never quote file contents, so the
audit's own output cannot carry an address or a name it found.

The one exception to reading files: on the live host (``root`` is ``/``) the
netfilter check also lists the live ruleset with ``nft`` and ``iptables-save``,
through an injectable command runner. On any other tree it reads only the
rulesets saved there, since the commands would describe the auditing host.

Sources for the OpenVPN verbosity threshold: ``src/openvpn/errlevel.h`` puts
``D_HANDSHAKE`` ("Peer Connection Initiated with [AF_INET]<address>:<port>") at
level 2 and ``D_MULTI_LOW`` (new-connection lines) at level 3; the manual calls
1 to 4 the normal range and 1 the default. So ``verb`` 2 and above write every
client's real address on every connection.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from nodeagent.config.units import parse_duration
from nodeagent.privacy.netfilter import (
    Chain,
    CommandFailed,
    Runner,
    iptables_log_chains,
    nft_json_log_chains,
    nft_log_chains,
    run_command,
)

DEFAULT_CONFIG = "/etc/nodeagent/config.yaml"
#: The longest a client's IP may linger after it goes quiet before the audit objects.
MAX_LINGER = 300.0
OPENVPN_MAX_VERB = 1
_SCRUB_FLOOR = 180.0


@dataclass(frozen=True, slots=True)
class Finding:
    """One way the host breaks the promise: where, what it records, how to fix it."""

    code: str
    where: str
    what: str
    fix: str

    def render(self) -> str:
        return f"{self.code}: {self.where}: {self.what}\n    fix: {self.fix}"


def _under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except (OSError, ValueError):
        return None


def _host(root: Path, path: Path) -> str:
    """The host path of a file in the tree, for messages."""
    try:
        return "/" + str(path.relative_to(root))
    except ValueError:
        return str(path)


# --- journald -------------------------------------------------------------------


def _journald_storage(root: Path) -> tuple[str, str]:
    """The effective ``Storage=`` and the file that set it (drop-ins override the main file)."""
    files = [_under(root, "/etc/systemd/journald.conf")]
    for d in ("/usr/lib/systemd/journald.conf.d", "/etc/systemd/journald.conf.d"):
        files += sorted(_under(root, d).glob("*.conf"))
    storage, source = "auto", "(default)"
    for f in files:
        text = _read(f)
        if text is None:
            continue
        section = ""
        for raw in text.splitlines():
            line = raw.strip()
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1].strip()
            elif section == "Journal" and line.startswith("Storage="):
                storage, source = line.partition("=")[2].strip().lower(), _host(root, f)
    return storage, source


def check_journald(root: Path) -> list[Finding]:
    storage, source = _journald_storage(root)
    journal_dir = _under(root, "/var/log/journal")
    if storage == "persistent" or (storage == "auto" and journal_dir.is_dir()):
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


# --- OpenVPN --------------------------------------------------------------------

_OVPN_FILE_DIRECTIVES = {
    "status": "writes a status file listing each client's real address and byte counts",
    "log": "writes its log, with client addresses, to a file",
    "log-append": "writes its log, with client addresses, to a file",
    "ifconfig-pool-persist": "keeps which client got which tunnel address on disk",
}


def _ovpn_directives(text: str) -> Iterator[tuple[str, list[str]]]:
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or line.startswith("<"):
            continue
        parts = line.split()
        yield parts[0].lstrip("-").lower(), parts[1:]


def check_openvpn(root: Path) -> list[Finding]:
    out: list[Finding] = []
    base = _under(root, "/etc/openvpn")
    for f in sorted(base.rglob("*.conf")) if base.is_dir() else []:
        text = _read(f)
        if text is None:
            continue
        where = _host(root, f)
        for name, args in _ovpn_directives(text):
            if name in _OVPN_FILE_DIRECTIVES and not (args and args[0] == "/dev/null"):
                out.append(
                    Finding(
                        f"openvpn-{name}",
                        where,
                        f"'{name}' {_OVPN_FILE_DIRECTIVES[name]}",
                        f"remove the '{name}' line (nodeagent reads aggregate load-stats "
                        "over the management socket instead)",
                    )
                )
            elif name == "verb" and args and args[0].isdigit() and int(args[0]) > OPENVPN_MAX_VERB:
                out.append(
                    Finding(
                        "openvpn-verb",
                        where,
                        f"'verb' above {OPENVPN_MAX_VERB} logs every client's real address "
                        "on connection (D_HANDSHAKE is level 2)",
                        f"set 'verb {OPENVPN_MAX_VERB}' (or 0), with 'mute-replay-warnings'",
                    )
                )
    return out


# --- wg-quick -------------------------------------------------------------------

_SAVECONFIG = re.compile(r"^\s*SaveConfig\s*=\s*(\S+)", re.IGNORECASE | re.MULTILINE)


def check_wg_quick(root: Path) -> list[Finding]:
    out: list[Finding] = []
    for f in sorted(_under(root, "/etc/wireguard").glob("*.conf")):
        text = _read(f)
        if text is None:
            continue
        if any(m.group(1).lower() == "true" for m in _SAVECONFIG.finditer(text)):
            out.append(
                Finding(
                    "wg-quick-saveconfig",
                    _host(root, f),
                    "SaveConfig = true writes every peer's current endpoint to this file "
                    "when the interface goes down",
                    "remove the SaveConfig line (or set it to false) and delete Endpoint "
                    "lines of client peers from the file",
                )
            )
    return out


# --- kernel ---------------------------------------------------------------------

_DYNDBG = "/sys/kernel/debug/dynamic_debug/control"


def check_dynamic_debug(root: Path) -> list[Finding]:
    text = _read(_under(root, _DYNDBG))
    if text is None:
        return []
    for line in text.splitlines():
        if "[wireguard]" not in line:
            continue
        # "<file>:<line> [module]<function> =<flags> "<format>""
        flags = next((tok for tok in line.split() if tok.startswith("=")), "=_")
        if flags not in ("=_", "="):
            return [
                Finding(
                    "wireguard-dynamic-debug",
                    _DYNDBG,
                    "WireGuard debug messages are enabled; they name each peer's endpoint "
                    "on every handshake",
                    f"echo 'module wireguard -p' > {_DYNDBG}, and remove "
                    "wireguard.dyndbg from the kernel command line and modprobe.d",
                )
            ]
    return []


_SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/lib/sysctl.d")


def _sysctl_settings(root: Path) -> Iterator[tuple[str, str, str]]:
    """(file, key, value) of each sysctl setting in the boot-time configuration."""
    files = [_under(root, "/etc/sysctl.conf")]
    for d in _SYSCTL_DIRS:
        files += sorted(_under(root, d).glob("*.conf"))
    for f in files:
        text = _read(f)
        for raw in (text or "").splitlines():
            line = raw.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            k, _, v = line.partition("=")
            yield _host(root, f), k.strip().replace("/", "."), v.strip()


def check_conntrack(root: Path) -> list[Finding]:
    out: list[Finding] = []
    proc = _under(root, "/proc/sys/net/netfilter")
    acct_fix = (
        "sysctl -w net.netfilter.nf_conntrack_acct=0 and remove it from /etc/sysctl.d "
        "(and do not load nf_conntrack with acct=1)"
    )
    if (_read(proc / "nf_conntrack_acct") or "").strip() == "1":
        out.append(
            Finding(
                "conntrack-acct",
                "/proc/sys/net/netfilter/nf_conntrack_acct",
                "conntrack counts bytes and packets per connection, i.e. per user",
                acct_fix,
            )
        )
    for f, k, v in _sysctl_settings(root):
        if k == "net.netfilter.nf_conntrack_acct" and v == "1":
            out.append(
                Finding("conntrack-acct", f, "turns on per-connection byte accounting", acct_fix)
            )
    if (_read(proc / "nf_conntrack_log_invalid") or "0").strip() not in ("0", ""):
        out.append(
            Finding(
                "conntrack-log-invalid",
                "/proc/sys/net/netfilter/nf_conntrack_log_invalid",
                "conntrack logs packets it considers invalid, with their addresses",
                "sysctl -w net.netfilter.nf_conntrack_log_invalid=0",
            )
        )
    # A logger bound in nf_log records nothing by itself: check_netfilter_log
    # looks for the rules that send packets to it.
    for daemon in ("/etc/conntrackd/conntrackd.conf", "/etc/ulogd.conf"):
        if _under(root, daemon).exists():
            out.append(
                Finding(
                    "connection-logger",
                    daemon,
                    "a connection-tracking logger (conntrackd/ulogd) is installed",
                    "purge the package (apt purge conntrackd ulogd2) and its logs",
                )
            )
    return out


# --- netfilter logging rules ----------------------------------------------------

#: Rulesets loaded at boot: nftables.service (Debian, Red Hat), iptables-persistent,
#: iptables-services. A logging rule there comes back at the next boot.
_NFT_FILES = ("/etc/nftables.conf", "/etc/sysconfig/nftables.conf")
_IPTABLES_FILES = (
    "/etc/iptables/rules.v4",
    "/etc/iptables/rules.v6",
    "/etc/sysconfig/iptables",
    "/etc/sysconfig/ip6tables",
)
_NFT_INCLUDE = re.compile(r'^[ \t]*include[ \t]+"([^"\n]+)"[ \t]*;?[ \t]*$', re.MULTILINE)
_MAX_INCLUDE_DEPTH = 8


def check_netfilter_log(root: Path, run: Runner | None = None) -> list[Finding]:
    """One finding naming every chain with a LOG/NFLOG target or an nftables ``log`` statement.

    ``run`` lists the live ruleset; without it only the rulesets saved under
    ``root`` are read. A ruleset command that fails (the audit not run as
    root, a timeout) is its own finding: the rules it would show are unknown.
    """
    found: dict[str, set[Chain]] = {}
    failed: list[str] = []
    if run is not None:
        _live_rulesets(run, found, failed)
    for path in _NFT_FILES:
        text = _read(_under(root, path))
        if text is not None:
            found[path] = nft_log_chains(_nft_includes(root, text))
    for path in _IPTABLES_FILES:
        text = _read(_under(root, path))
        if text is not None:
            found[path] = iptables_log_chains(text)
    out: list[Finding] = []
    where = "; ".join(
        f"{source} ({', '.join(sorted(str(c) for c in chains))})"
        for source, chains in found.items()
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
    if failed:
        out.append(
            Finding(
                "netfilter-unreadable",
                ", ".join(failed),
                "the live ruleset could not be listed, so packet-logging rules cannot be ruled out",
                "run nodeagent audit as root (listing the ruleset needs CAP_NET_ADMIN)",
            )
        )
    return out


def _live_rulesets(run: Runner, found: dict[str, set[Chain]], failed: list[str]) -> None:
    """Fill ``found`` with the logging chains of each live ruleset, ``failed`` with what failed."""
    nft = "nft list ruleset"
    try:
        text = run(["nft", "-j", "list", "ruleset"])
        if text is not None:
            found[nft] = nft_json_log_chains(text)
    except (CommandFailed, ValueError):
        # An nft built without JSON support: its own syntax says the same.
        try:
            text = run(["nft", "list", "ruleset"])
            if text is not None:
                found[nft] = nft_log_chains(text)
        except CommandFailed:
            failed.append(nft)
    for family in ("iptables", "ip6tables"):
        # Both back ends can hold tables at once; the plain name is an
        # alternative for one of them, only run where neither variant exists.
        ran = False
        for command in (f"{family}-legacy-save", f"{family}-nft-save", f"{family}-save"):
            if ran and command == f"{family}-save":
                break
            try:
                text = run([command])
            except CommandFailed:
                failed.append(command)
                ran = True
                continue
            if text is not None:
                found[command] = iptables_log_chains(text)
                ran = True


def _nft_includes(root: Path, text: str, depth: int = 0) -> str:
    """``text`` with its ``include`` lines replaced by the files they name under ``root``.

    A relative name is searched in /etc, nft's default include directory.
    Deeper than a few levels (an include loop) the lines are dropped.
    """

    def expand(m: re.Match[str]) -> str:
        if depth >= _MAX_INCLUDE_DEPTH:
            return ""
        name = m.group(1)
        pattern = (name if name.startswith("/") else "/etc/" + name).lstrip("/")
        try:
            files = sorted(root.glob(pattern))
        except (OSError, ValueError):
            return ""
        texts = (_read(f) for f in files if f.is_file())
        return "\n".join(_nft_includes(root, t, depth + 1) for t in texts if t is not None)

    return _NFT_INCLUDE.sub(expand, text)


# --- the agent itself -----------------------------------------------------------


def check_agent_config(root: Path, config: str = DEFAULT_CONFIG) -> list[Finding]:
    path = _under(root, config) if Path(config).is_absolute() else Path(config)
    text = _read(path)
    fix_config = f"set privacy.scrub_idle_after: 180s and privacy.scrub_interval: 30s in {config}"
    if text is None:
        return [
            Finding(
                "agent-config-missing",
                config,
                "the agent's configuration is not readable, so scrubbing cannot be verified",
                f"pass the right file with -c, or install it at {DEFAULT_CONFIG}",
            )
        ]
    try:
        doc = yaml.safe_load(text)
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


__all__ = ["CHECKS", "DEFAULT_CONFIG", "Finding", "audit"]
