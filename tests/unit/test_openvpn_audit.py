"""The audit's OpenVPN check over prepared /etc/openvpn trees: each finding, and none once fixed."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from nodeagent.cli.audit import run
from nodeagent.privacy.audit_checks import HostFile
from nodeagent.privacy.audit_openvpn import (
    OpenVPNFacts,
    check_openvpn,
    directives,
    openvpn_findings,
)
from tests.unit.test_audit import CONFIG, clean_tree

# The server the docs recommend: nothing in it records a user.
GOOD = """\
port 1194
proto udp
dev tun0
verb 1
mute-replay-warnings
management /run/openvpn-server/main.sock unix /etc/openvpn/server/main.mgmt.pw
management-client-auth
username-as-common-name
verify-client-cert none
status /dev/null
<ca>
status /var/log/inside-an-inline-block.log
</ca>
"""


def write(root: Path, path: str, text: str) -> Path:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)
    return f


def codes(root: Path) -> list[str]:
    return [f.code for f in check_openvpn(root)]


def test_good_server_has_no_finding(tmp_path: Path) -> None:
    write(tmp_path, "/etc/openvpn/server/main.conf", GOOD)
    write(tmp_path, "/etc/openvpn/server/tcp.conf", "management 127.0.0.1 7505 /etc/pw\n")
    write(tmp_path, "/etc/openvpn/server/pool.conf", "ifconfig-pool-persist /etc/ipp.txt 0\n")
    write(tmp_path, "/etc/openvpn/server/s.conf", "learn-address /etc/openvpn/fw.sh\n")
    write(
        tmp_path,
        "/etc/openvpn/fw.sh",
        "#!/bin/sh\nnft add element inet f s { $2 } 2>&1 >/dev/null\n",
    )
    assert codes(tmp_path) == []


CASES = {
    "status file": ("status /run/openvpn/status.log 10\nstatus-version 3\n", ["openvpn-status"]),
    "log file": ("log /var/log/openvpn.log\n", ["openvpn-log"]),
    "log-append with dashes": ("--log-append /var/log/o.log\n", ["openvpn-log-append"]),
    "verb 3 to a log file": (
        "verb 3\nlog-append /var/log/o.log\n",
        ["openvpn-verb", "openvpn-log-append"],
    ),
    "verb 2 to the journal": ("verb 2\n", ["openvpn-verb"]),
    "pool persisted": ("ifconfig-pool-persist ipp.txt\n", ["openvpn-ifconfig-pool-persist"]),
    "management on all addresses": (
        "management 0.0.0.0 7505 /etc/pw\n",
        ["openvpn-management-exposed"],
    ),
    "management on TCP without password": (
        "management localhost 7505\n",
        ["openvpn-management-no-password"],
    ),
    "management exposed and open": (
        "management 192.0.2.1 7505\n",
        ["openvpn-management-exposed", "openvpn-management-no-password"],
    ),
    "client-connect script that appends": (
        "client-connect /etc/openvpn/cc.sh\n",
        ["openvpn-script"],
    ),
    "client-disconnect script unreadable": (
        "client-disconnect /nonexistent.sh\n",
        ["openvpn-script"],
    ),
    "learn-address relative to the config": ("learn-address la.py\n", ["openvpn-script"]),
}


@pytest.mark.parametrize("name", list(CASES))
def test_each_finding(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    write(
        tmp_path,
        "/etc/openvpn/cc.sh",
        '#!/bin/sh\necho "$common_name $untrusted_ip" >> /var/log/c\n',
    )
    write(tmp_path, "/etc/openvpn/server/la.py", "open('/var/lib/x', 'a').write(ip)\n")
    write(tmp_path, "/etc/openvpn/server/main.conf", GOOD + text)
    assert sorted(codes(tmp_path)) == sorted(expected)


def test_findings_name_the_line_never_the_value(tmp_path: Path) -> None:
    write(
        tmp_path,
        "/etc/openvpn/server/main.conf",
        "verb 1\nstatus /var/log/s-198.51.100.7.log\n"
        "client-connect '/etc/u48151623 198.51.100.7.sh'\n",
    )
    findings = check_openvpn(tmp_path)
    assert [f.code for f in findings] == ["openvpn-status", "openvpn-script"]
    assert findings[0].where == "/etc/openvpn/server/main.conf"
    assert "(line 2)" in findings[0].what and "(line 3)" in findings[1].what
    for f in findings:
        assert "198.51.100.7" not in f.render() and "u48151623" not in f.render()


def test_the_audit_runs_the_openvpn_check(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    write(root, "/etc/openvpn/server/open.conf", "management 0.0.0.0 7505\n")
    out = io.StringIO()
    assert run(CONFIG, str(root), out) == 1
    assert "openvpn-management-exposed" in out.getvalue()


def test_pure_half_and_directive_reader() -> None:
    files = [HostFile("/etc/openvpn/a.conf", "client-connect /x.sh\n")]
    assert [
        f.code
        for f in openvpn_findings(
            OpenVPNFacts(files, {("/etc/openvpn/a.conf", "/x.sh"): "exit 0\n"})
        )
    ] == []
    assert [f.code for f in openvpn_findings(files)] == ["openvpn-script"]
    ds = list(
        directives('# c\n; c\n  VERB 4 # why\n--status "a b" 5\n<tls-auth>\nlog x\n</tls-auth>\n')
    )
    assert [(d.name, d.args, d.line) for d in ds] == [
        ("verb", ["4"], 3),
        ("status", ["a b", "5"], 4),
    ]
