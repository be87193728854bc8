"""The audit's OpenVPN check: every way an OpenVPN server's configuration records its users.

:func:`openvpn_facts` reads the configuration files under ``/etc/openvpn``
(``server/*.conf`` and any other ``*.conf`` below it) and the per-client
scripts they name, all below ``root``; :func:`openvpn_findings` decides over
them (pure). What it looks for, from OpenVPN 2.6's manual:

* ``status`` (any ``status-version``): a file listing each client's real
  address, byte counts and connection time, rewritten every N seconds;
* ``log`` / ``log-append``: a persistent log, which holds client addresses from
  ``verb`` 2 up;
* ``verb`` 2 or more, wherever the log goes (``D_HANDSHAKE``, "Peer Connection
  Initiated with [AF_INET]<address>:<port>", is level 2; without ``log`` it
  goes to the journal or syslog);
* ``ifconfig-pool-persist`` (unless its period is 0, read-only): which user
  got which tunnel address, on disk;
* ``client-connect``, ``client-disconnect``, ``learn-address`` (and the other
  per-client hooks): scripts that receive each client's real address and
  name; a finding when the script writes anything (a redirection, ``tee``,
  ``logger``, a file opened for writing) or cannot be read to tell;
* ``management`` on TCP: on a non-loopback address (anyone who reaches it can
  run ``status``), or without a password file. A unix socket without a
  password is not a finding: connecting needs write permission on the socket
  file, which OpenVPN's umask keeps to its own user.

Findings name the configuration file, the directive and its line, never a
path or a value written in the file (it may hold an address or a name).
"""

from __future__ import annotations

import ipaddress
import re
import shlex
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from nodeagent.privacy.audit_checks import HostFile
from nodeagent.privacy.audit_host import openvpn_files
from nodeagent.privacy.audit_report import Finding

__all__ = ["MAX_VERB", "OpenVPNFacts", "check_openvpn", "openvpn_facts", "openvpn_findings"]

MAX_VERB = 1
_FILES = {
    "status": "writes a status file listing each client's real address, byte counts and "
    "connection time (whatever its status-version)",
    "log": "writes its log, with client addresses, to a file",
    "log-append": "writes its log, with client addresses, to a file",
    "ifconfig-pool-persist": "keeps which client got which tunnel address on disk",
}
_SCRIPTS = (
    "client-connect",
    "client-disconnect",
    "learn-address",
    "auth-user-pass-verify",
    "tls-verify",
    "client-crresponse",
)
# A shell redirection to a file (not to /dev/null or another descriptor), tee,
# logger, or a file opened for writing or appending in Python, Perl and the like.
_WRITES = re.compile(
    r"(?<![0-9&<>=-])>>?\s*(?!\s*&|\s*/dev/null\b)\S"
    r"|\btee\b|\blogger\b|\bsyslog\b|\bopen\s*\([^)]*['\"][wa+]"
    r"|\bwrite_text\b|\bwrite_bytes\b|\bsqlite3?\b|\bcurl\b|\bwget\b"
)


@dataclass(frozen=True, slots=True)
class Directive:
    name: str
    args: list[str]
    line: int


@dataclass(frozen=True, slots=True)
class OpenVPNFacts:
    """The configuration files, and each per-client script's text by the command written."""

    files: Sequence[HostFile]
    # (configuration file, command as written) -> the script's text; None: unreadable.
    scripts: Mapping[tuple[str, str], str | None] = field(default_factory=dict)


def directives(text: str) -> Iterator[Directive]:
    """An OpenVPN configuration's directives with their line numbers (inline blocks left out)."""
    inline: str | None = None
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if inline is not None:
            if line.lower() == f"</{inline}>":
                inline = None
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("<") and line.endswith(">") and not line.startswith("</"):
            inline = line[1:-1].lower()
            continue
        try:
            parts = shlex.split(line, comments=True)
        except ValueError:
            parts = line.split()
        if parts:
            yield Directive(parts[0].lstrip("-").lower(), parts[1:], n)


def _script_command(d: Directive) -> str | None:
    # learn-address cmd; client-connect cmd; auth-user-pass-verify cmd via-env|via-file
    return d.args[0] if d.args else None


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _finding(code: str, where: str, d: Directive, what: str, fix: str) -> Finding:
    return Finding(code, where, f"'{d.name}' (line {d.line}) {what}", fix)


def _management(where: str, d: Directive) -> list[Finding]:
    if len(d.args) < 2 or d.args[1] == "unix":
        return []
    out: list[Finding] = []
    if not _loopback(d.args[0]):
        out.append(
            _finding(
                "openvpn-management-exposed",
                where,
                d,
                "listens on a non-loopback address: whoever reaches it can list every "
                "client's real address",
                "use a unix socket: 'management /run/openvpn-server/NAME.sock unix PWFILE'",
            )
        )
    if len(d.args) < 3:
        out.append(
            _finding(
                "openvpn-management-no-password",
                where,
                d,
                "listens on TCP without a password file: any local process can connect",
                "add a password file (mode 0600) as its third argument, or use a unix socket",
            )
        )
    return out


def _file_directive(where: str, d: Directive) -> list[Finding]:
    if d.args and d.args[0] == "/dev/null":
        return []
    if d.name == "ifconfig-pool-persist" and len(d.args) > 1 and d.args[1] == "0":
        return []  # period 0: the file is only read, never written
    return [
        _finding(
            f"openvpn-{d.name}",
            where,
            d,
            _FILES[d.name],
            f"remove the '{d.name}' line (nodeagent reads aggregate load-stats "
            "over the management socket instead)",
        )
    ]


def _script(where: str, d: Directive, text: str | None) -> list[Finding]:
    if text is not None and not _WRITES.search(text):
        return []
    what = (
        "runs a script that receives each client's real address and name, and writes"
        if text is not None
        else "runs a script that receives each client's real address and name, and "
        "the audit cannot read it to tell that it writes nothing"
    )
    return [
        _finding(
            "openvpn-script",
            where,
            d,
            what,
            "remove the line (nodeagent authenticates and ends sessions over the "
            "management interface), or make the script write nothing",
        )
    ]


def openvpn_findings(facts: OpenVPNFacts | Sequence[HostFile]) -> list[Finding]:
    """Over OpenVPN's configuration files and the scripts they name (pure)."""
    if not isinstance(facts, OpenVPNFacts):
        facts = OpenVPNFacts(facts)
    out: list[Finding] = []
    for where, text in facts.files:
        for d in directives(text):
            if d.name in _FILES:
                out += _file_directive(where, d)
            elif d.name == "verb" and d.args and d.args[0].isdigit() and int(d.args[0]) > MAX_VERB:
                out.append(
                    _finding(
                        "openvpn-verb",
                        where,
                        d,
                        f"above {MAX_VERB} logs every client's real address on connection "
                        "(D_HANDSHAKE is level 2), to the journal when there is no 'log' file",
                        f"set 'verb {MAX_VERB}' (or 0), with 'mute-replay-warnings'",
                    )
                )
            elif d.name in _SCRIPTS:
                cmd = _script_command(d)
                if cmd is not None:
                    out += _script(where, d, facts.scripts.get((where, cmd)))
            elif d.name == "management":
                out += _management(where, d)
    return out


def openvpn_facts(root: Path) -> OpenVPNFacts:
    files = openvpn_files(root)
    scripts: dict[tuple[str, str], str | None] = {}
    for where, text in files:
        for d in directives(text):
            cmd = _script_command(d) if d.name in _SCRIPTS else None
            if cmd is None:
                continue
            program = cmd.split()[0] if cmd.split() else cmd
            path = PurePosixPath(program)
            if not path.is_absolute():
                path = PurePosixPath(where).parent / path
            try:
                scripts[(where, cmd)] = (root / str(path).lstrip("/")).read_text(errors="replace")
            except (OSError, ValueError):
                scripts[(where, cmd)] = None
    return OpenVPNFacts(files, scripts)


def check_openvpn(root: Path) -> list[Finding]:
    return openvpn_findings(openvpn_facts(root))
