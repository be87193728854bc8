"""``nodeagent audit`` over prepared host trees: each finding present, and absent when fixed."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import pytest

from nodeagent.privacy.audit import audit
from nodeagent.privacy.audit_cli import main, run

CONFIG = "/etc/nodeagent/config.yaml"
DYNDBG = "sys/kernel/debug/dynamic_debug/control"
WG_DEBUG_LINE = (
    "drivers/net/wireguard/send.c:28 [wireguard]wg_packet_send_handshake_initiation {} "
    '"%s: Sending handshake initiation to peer %llu (%pISpfsc)\\012"\n'
)


def write(root: Path, path: str, text: str) -> None:
    f = root / path.lstrip("/")
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(text)


def clean_tree(root: Path) -> Path:
    """A host that keeps the promise: every check has something to look at, and passes."""
    write(root, "/etc/systemd/journald.conf", "[Journal]\nStorage=volatile\n")
    ovpn = "port 1194\n# status /var/log/openvpn-status.log\n;log x\nverb 1\nmanagement /m unix\n"
    write(root, "/etc/openvpn/server/main.conf", ovpn)
    write(root, "/etc/wireguard/wg0.conf", "[Interface]\nListenPort = 51820\nSaveConfig = false\n")
    write(root, DYNDBG, WG_DEBUG_LINE.format("=_"))
    write(root, "/proc/sys/net/netfilter/nf_conntrack_acct", "0\n")
    write(root, "/proc/sys/net/netfilter/nf_conntrack_log_invalid", "0\n")
    write(root, "/proc/sys/net/netfilter/nf_log/2", "NONE\n")
    write(root, "/etc/sysctl.d/10-net.conf", "net.ipv4.ip_forward = 1\n")
    write(
        root, CONFIG, "node: {name: n1}\nprivacy: {scrub_idle_after: 180s, scrub_interval: 30s}\n"
    )
    return root


def codes(root: Path) -> list[str]:
    return [f.code for f in audit(root, CONFIG)]


def test_clean_tree_has_no_finding(tmp_path: Path) -> None:
    assert codes(clean_tree(tmp_path)) == []


def test_empty_tree_only_misses_the_agent_config(tmp_path: Path) -> None:
    assert codes(tmp_path) == ["agent-config-missing"]


Mutation = Callable[[Path], None]

CASES: dict[str, tuple[Mutation, str]] = {
    "journald persistent": (
        lambda r: write(r, "/etc/systemd/journald.conf", "[Journal]\nStorage=persistent\n"),
        "journald-persistent",
    ),
    "journald drop-in overrides main file": (
        lambda r: write(
            r, "/etc/systemd/journald.conf.d/x.conf", "[Journal]\nStorage=persistent\n"
        ),
        "journald-persistent",
    ),
    "journald auto with /var/log/journal": (
        lambda r: (
            write(r, "/etc/systemd/journald.conf", "[Journal]\n#Storage=auto\n"),
            (r / "var/log/journal").mkdir(parents=True),
        ),
        "journald-persistent",
    ),
    "openvpn status": (
        lambda r: write(r, "/etc/openvpn/server/b.conf", "status /run/openvpn/status.log 10\n"),
        "openvpn-status",
    ),
    "openvpn log": (
        lambda r: write(r, "/etc/openvpn/a.conf", "log /var/log/openvpn.log\n"),
        "openvpn-log",
    ),
    "openvpn log-append in a subdirectory": (
        lambda r: write(r, "/etc/openvpn/x/y/c.conf", "--log-append /var/log/o.log\n"),
        "openvpn-log-append",
    ),
    "openvpn verb 2 (D_HANDSHAKE)": (
        lambda r: write(r, "/etc/openvpn/server/main.conf", "verb 2\n"),
        "openvpn-verb",
    ),
    "openvpn verb 4": (
        lambda r: write(r, "/etc/openvpn/server/main.conf", "verb 4\n"),
        "openvpn-verb",
    ),
    "openvpn ifconfig-pool-persist": (
        lambda r: write(r, "/etc/openvpn/server/p.conf", "ifconfig-pool-persist ipp.txt\n"),
        "openvpn-ifconfig-pool-persist",
    ),
    "wg-quick SaveConfig": (
        lambda r: write(r, "/etc/wireguard/wg1.conf", "[Interface]\nsaveconfig=True\n"),
        "wg-quick-saveconfig",
    ),
    "wireguard dynamic debug": (
        lambda r: write(r, DYNDBG, WG_DEBUG_LINE.format("=_") + WG_DEBUG_LINE.format("=pf")),
        "wireguard-dynamic-debug",
    ),
    "conntrack accounting live": (
        lambda r: write(r, "/proc/sys/net/netfilter/nf_conntrack_acct", "1\n"),
        "conntrack-acct",
    ),
    "conntrack accounting at boot": (
        lambda r: write(r, "/etc/sysctl.d/90-acct.conf", "net/netfilter/nf_conntrack_acct=1\n"),
        "conntrack-acct",
    ),
    "conntrack log invalid": (
        lambda r: write(r, "/proc/sys/net/netfilter/nf_conntrack_log_invalid", "255\n"),
        "conntrack-log-invalid",
    ),
    "nf_log bound": (
        lambda r: write(r, "/proc/sys/net/netfilter/nf_log/2", "nf_log_ipv4\n"),
        "nf-log",
    ),
    "conntrackd installed": (
        lambda r: write(r, "/etc/conntrackd/conntrackd.conf", "General {}\n"),
        "connection-logger",
    ),
    "scrub disabled": (
        lambda r: write(r, CONFIG, "privacy: {scrub_interval: 0s}\n"),
        "scrub-disabled",
    ),
    "scrub too slow": (
        lambda r: write(r, CONFIG, "privacy: {scrub_idle_after: 1h}\n"),
        "scrub-too-slow",
    ),
    "scrub too eager": (
        lambda r: write(r, CONFIG, "privacy: {scrub_idle_after: 10s}\n"),
        "scrub-too-eager",
    ),
    "scrub off": (
        lambda r: write(r, CONFIG, "privacy: {scrub_idle_after: off}\n"),
        "scrub-disabled",
    ),
    "config not YAML": (lambda r: write(r, CONFIG, "- [\n"), "agent-config-invalid"),
}


@pytest.mark.parametrize("case", CASES)
def test_each_finding_present_then_absent(tmp_path: Path, case: str) -> None:
    mutate, code = CASES[case]
    root = clean_tree(tmp_path)
    mutate(root)
    assert codes(root) == [code]
    out = io.StringIO()
    assert run(CONFIG, str(root), out) == 1
    text = out.getvalue()
    assert code in text and "fix: " in text
    assert codes(_fixed(root)) == [], "the documented fix clears the finding"


def _fixed(root: Path) -> Path:
    """The same tree after the operator applied the fix."""
    for stale in (
        "etc/systemd/journald.conf.d/x.conf", "var/log/journal", "etc/openvpn/server/b.conf",
        "etc/openvpn/a.conf", "etc/openvpn/x/y/c.conf", "etc/openvpn/server/p.conf",
        "etc/wireguard/wg1.conf", "etc/sysctl.d/90-acct.conf", "etc/conntrackd/conntrackd.conf",
    ):  # fmt: skip
        p = root / stale
        if p.is_dir():
            p.rmdir()
        elif p.exists():
            p.unlink()
    return clean_tree(root)


def test_output_never_quotes_file_contents(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    write(root, "/etc/openvpn/server/main.conf", "status /var/log/s-198.51.100.7.log\nverb 5\n")
    write(root, DYNDBG, WG_DEBUG_LINE.format("=p") + "peer 198.51.100.7\n")
    out = io.StringIO()
    assert run(CONFIG, str(root), out) == 1
    assert "198.51.100.7" not in out.getvalue()


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = clean_tree(tmp_path)
    assert main(["--root", str(root), "-c", CONFIG]) == 0
    assert "0 finding(s)" in capsys.readouterr().out
    assert main(["--root", str(root), "-c", "/etc/nodeagent/other.yaml"]) == 1
    assert main(["--bogus"]) == 2
