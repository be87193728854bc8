"""Gathering the audit's facts from a host tree: every file it reads, every command it runs.

Every read is below ``root``; a file that cannot be read is left out (or
None), never an error. The facts are the types of
:mod:`nodeagent.privacy.audit_checks`, which decides what they mean.

The one exception to reading files: on the live host (``root`` is ``/``) the
audit also lists the live ruleset with ``nft`` and ``iptables-save``, through
an injectable command runner (:func:`netfilter_facts`). On any other tree it
reads only the rulesets saved there, since the commands would describe the
auditing host.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from nodeagent.privacy.audit_checks import (
    DYNDBG,
    AgentConfigFacts,
    ConntrackFacts,
    HostFile,
    JournaldFacts,
    NetfilterFacts,
)
from nodeagent.privacy.netfilter import (
    Chain,
    CommandFailed,
    Runner,
    iptables_log_chains,
    nft_json_log_chains,
    nft_log_chains,
)

__all__ = [
    "agent_config_facts",
    "conntrack_facts",
    "dynamic_debug_control",
    "journald_facts",
    "netfilter_facts",
    "openvpn_files",
    "wg_quick_files",
]


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


def _host_files(root: Path, files: Iterable[Path]) -> tuple[HostFile, ...]:
    """The readable ones of ``files``, in order, with their host paths."""
    out: list[HostFile] = []
    for f in files:
        text = _read(f)
        if text is not None:
            out.append(HostFile(_host(root, f), text))
    return tuple(out)


def journald_facts(root: Path) -> JournaldFacts:
    files = [_under(root, "/etc/systemd/journald.conf")]
    for d in ("/usr/lib/systemd/journald.conf.d", "/etc/systemd/journald.conf.d"):
        files += sorted(_under(root, d).glob("*.conf"))
    return JournaldFacts(_host_files(root, files), _under(root, "/var/log/journal").is_dir())


def openvpn_files(root: Path) -> tuple[HostFile, ...]:
    base = _under(root, "/etc/openvpn")
    return _host_files(root, sorted(base.rglob("*.conf")) if base.is_dir() else [])


def wg_quick_files(root: Path) -> tuple[HostFile, ...]:
    return _host_files(root, sorted(_under(root, "/etc/wireguard").glob("*.conf")))


def dynamic_debug_control(root: Path) -> str | None:
    return _read(_under(root, DYNDBG))


_SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/lib/sysctl.d")
_CONNECTION_LOGGERS = ("/etc/conntrackd/conntrackd.conf", "/etc/ulogd.conf")


def conntrack_facts(root: Path) -> ConntrackFacts:
    proc = _under(root, "/proc/sys/net/netfilter")
    sysctl = [_under(root, "/etc/sysctl.conf")]
    for d in _SYSCTL_DIRS:
        sysctl += sorted(_under(root, d).glob("*.conf"))
    return ConntrackFacts(
        acct=_read(proc / "nf_conntrack_acct"),
        log_invalid=_read(proc / "nf_conntrack_log_invalid"),
        sysctl_files=_host_files(root, sysctl),
        loggers=tuple(d for d in _CONNECTION_LOGGERS if _under(root, d).exists()),
    )


# --- netfilter rulesets ---------------------------------------------------------

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


def netfilter_facts(root: Path, run: Runner | None = None) -> NetfilterFacts:
    """The chains with a LOG/NFLOG target or an nftables ``log`` statement, per ruleset.

    ``run`` lists the live ruleset (those come first); without it only the
    rulesets saved under ``root`` are read. A ruleset command that fails (the
    audit not run as root, a timeout) is listed in ``failed``.
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
    return NetfilterFacts(found, tuple(failed))


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


def agent_config_facts(root: Path, config: str) -> AgentConfigFacts:
    """The agent's configuration: ``config`` below ``root`` if absolute, else as given."""
    path = _under(root, config) if Path(config).is_absolute() else Path(config)
    return AgentConfigFacts(config, _read(path))
