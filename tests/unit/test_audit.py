"""``nodeagent audit`` over prepared host trees: each finding present, and absent when fixed."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from nodeagent.cli.audit import main, run
from nodeagent.privacy import audit_checks as checks
from nodeagent.privacy.audit import audit
from nodeagent.privacy.audit_checks import ConntrackFacts, HostFile, JournaldFacts
from nodeagent.privacy.netfilter import CommandFailed, iptables_log_chains, nft_log_chains

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
    write(root, "/etc/nftables.conf", NFT_CONF)
    write(root, "/etc/iptables/rules.v4", RULES_V4)
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
    "nftables log rule saved": (
        lambda r: write(r, "/etc/nftables.conf", NFT_CONF_LOGGING),
        "netfilter-log",
    ),
    "iptables NFLOG rule saved": (
        lambda r: write(r, "/etc/iptables/rules.v4", RULES_V4_LOGGING),
        "netfilter-log",
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


def test_checks_decide_over_facts_without_a_tree() -> None:
    """The pure half of the audit: the same decisions from facts, with no file system."""
    volatile = HostFile("/etc/systemd/journald.conf", "[Journal]\nStorage=volatile\n")
    drop_in = HostFile("/etc/systemd/journald.conf.d/x.conf", "[Journal]\nStorage=persistent\n")
    assert checks.journald_findings(JournaldFacts([volatile], journal_dir=True)) == []
    (f,) = checks.journald_findings(JournaldFacts([volatile, drop_in], journal_dir=False))
    assert (f.code, f.where) == ("journald-persistent", drop_in.where)
    sysctl = [HostFile("/etc/sysctl.d/9.conf", "net/netfilter/nf_conntrack_acct = 1\n")]
    facts = ConntrackFacts(acct="0\n", log_invalid="", sysctl_files=sysctl, loggers=())
    assert [(f.code, f.where) for f in checks.conntrack_findings(facts)] == [
        ("conntrack-acct", "/etc/sysctl.d/9.conf")
    ]
    assert checks.dynamic_debug_findings(None) == []


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = clean_tree(tmp_path)
    assert main(["--root", str(root), "-c", CONFIG]) == 0
    assert "0 finding(s)" in capsys.readouterr().out
    assert main(["--root", str(root), "-c", "/etc/nodeagent/other.yaml"]) == 1
    assert main(["--bogus"]) == 2


# --- packet-logging rules -------------------------------------------------------------

NF_LOGGERS = {2: "nf_log_ipv4", 3: "nf_log_arp", 5: "nf_log_netdev", 7: "nf_log_bridge"}
NF_LOGGERS[10] = "nf_log_ipv6"

NFT_CONF = """#!/usr/sbin/nft -f
flush ruleset
table inet filter {
    set trusted { type ipv4_addr; elements = { 192.0.2.1 } }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport { 22, 80 } counter accept comment "log ssh"
        iif lo accept
    }
    chain forward {
        type filter hook forward priority filter; policy accept;
    }
}
"""
NFT_CONF_LOGGING = NFT_CONF.replace("iif lo accept", 'iif lo accept\n        log prefix "in " drop')
RULES_V4 = """# Generated by iptables-save v1.8.9
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
-A FORWARD -m comment --comment "-j LOG here is only a comment" -j ACCEPT
COMMIT
*nat
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
"""
RULES_V4_LOGGING = RULES_V4.replace(
    "-A POSTROUTING", "-A POSTROUTING -j NFLOG --nflog-group 2\n-A POSTROUTING"
)


def test_bound_loggers_without_a_logging_rule_are_no_finding(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)  # saved rulesets without a logging rule
    for family, logger in NF_LOGGERS.items():
        write(root, f"/proc/sys/net/netfilter/nf_log/{family}", logger + "\n")
    assert codes(root) == [], "a bound logger records nothing by itself: rules do"


def test_saved_logging_rules_are_one_finding_naming_each(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    write(root, "/etc/nftables.conf", NFT_CONF_LOGGING)
    write(root, "/etc/iptables/rules.v4", RULES_V4_LOGGING)
    findings = audit(root, CONFIG)
    assert [f.code for f in findings] == ["netfilter-log"]
    (f,) = findings
    assert (
        f.where
        == "/etc/nftables.conf (inet filter/input); /etc/iptables/rules.v4 (nat/POSTROUTING)"
    )
    assert "192.0.2" not in f.render() and '"in "' not in f.render() and "nflog" not in f.render()
    assert "nft" in f.fix and "iptables" in f.fix
    write(root, "/etc/nftables.conf", NFT_CONF)
    write(root, "/etc/iptables/rules.v4", RULES_V4)
    assert codes(root) == [], "the documented fix clears the finding"


NFT_JSON_EMPTY = '{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]}'


def nft_json(*rules: tuple[str, str, str, list[object]]) -> str:
    items: list[object] = [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}}]
    for family, table, chain, expr in rules:
        items.append({"table": {"family": family, "name": table, "handle": 1}})
        items.append({"chain": {"family": family, "table": table, "name": chain, "handle": 1}})
        rule = {"family": family, "table": table, "chain": chain, "handle": 3, "expr": expr}
        items.append({"rule": rule})
    return json.dumps({"nftables": items})


IPT_SAVE = "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -m tcp --dport 25 -j ACCEPT\nCOMMIT\n"


class Commands:
    """A scripted command runner: argv -> stdout, an exception, or absent (None)."""

    def __init__(self, answers: dict[tuple[str, ...], str | Exception]) -> None:
        self.answers = answers
        self.ran: list[tuple[str, ...]] = []

    def __call__(self, argv: Sequence[str]) -> str | None:
        self.ran.append(tuple(argv))
        answer = self.answers.get(tuple(argv))
        if isinstance(answer, Exception):
            raise answer
        return answer


def test_live_logging_rules_one_in_iptables_one_in_nft(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    for family, logger in NF_LOGGERS.items():
        write(root, f"/proc/sys/net/netfilter/nf_log/{family}", logger + "\n")
    log_rule = [{"counter": {"packets": 0, "bytes": 0}}, {"log": {"prefix": "x", "group": 2}}]
    run = Commands(
        {
            ("nft", "-j", "list", "ruleset"): nft_json(("inet", "filter", "input", log_rule)),
            ("iptables-legacy-save",): IPT_SAVE.replace("-j ACCEPT", "-j LOG"),
            ("iptables-nft-save",): IPT_SAVE,
            ("ip6tables-nft-save",): "",
        }
    )
    findings = audit(root, CONFIG, run=run)
    assert [f.code for f in findings] == ["netfilter-log"]
    where = findings[0].where
    assert where == "nft list ruleset (inet filter/input); iptables-legacy-save (filter/INPUT)"
    assert ("ip6tables-save",) not in run.ran, "the variants exist, so the alternative is not run"

    run.answers[("nft", "-j", "list", "ruleset")] = NFT_JSON_EMPTY
    run.answers[("iptables-legacy-save",)] = IPT_SAVE
    assert codes_with(root, run) == []


def codes_with(root: Path, run: Commands) -> list[str]:
    return [f.code for f in audit(root, CONFIG, run=run)]


def test_live_ruleset_fallbacks_and_failures(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    no_json = CommandFailed("exit status 1")  # an nft built without JSON support
    xt = 'table ip filter {\n\tchain INPUT {\n\t\tcounter xt target "LOG"\n\t}\n}\n'
    run = Commands({("nft", "-j", "list", "ruleset"): no_json, ("nft", "list", "ruleset"): xt})
    run.answers[("iptables-save",)] = IPT_SAVE
    findings = audit(root, CONFIG, run=run)
    assert [(f.code, f.where) for f in findings] == [
        ("netfilter-log", "nft list ruleset (ip filter/INPUT)")
    ]
    assert ("iptables-save",) in run.ran, "without variants, the plain command is run"

    denied = CommandFailed("exit status 1")  # not root
    run = Commands({("nft", "-j", "list", "ruleset"): denied, ("nft", "list", "ruleset"): denied})
    run.answers[("ip6tables-legacy-save",)] = CommandFailed("timed out after 10s")
    findings = audit(root, CONFIG, run=run)
    assert [(f.code, f.where) for f in findings] == [
        ("netfilter-unreadable", "nft list ruleset, ip6tables-legacy-save")
    ]


def test_no_commands_run_on_a_tree_that_is_not_this_host(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    assert codes(root) == []  # would fail or find this host's own rules otherwise


@pytest.mark.parametrize(
    ("ruleset", "chains"),
    [
        (NFT_CONF, set()),
        (NFT_CONF_LOGGING, {"inet filter/input"}),
        # the command form, an anonymous set inside the rule, the default family
        ("add table t\nadd rule t c tcp dport { 1, 2 } log\n", {"ip t/c"}),
        ("rule ip6 t c meta nftrace set 1\nrule inet t d log group 1 ; \n", {"inet t/d"}),
        # iptables-nft rules that nft cannot translate
        ("table ip filter { chain OUTPUT { xt target NFLOG } }", {"ip filter/OUTPUT"}),
        # "log" as a word, not a statement
        (
            'table inet t {\n chain c { jump log_drop; comment "log" }\n chain log_drop {}\n}\n',
            set(),
        ),
        ("table inet t { # log\n chain c { accept # log everything\n }\n}\n", set()),
        # a netdev chain's device set, a map, a multi-line rule
        (
            "table netdev t {\n chain c {\n type filter hook ingress devices = { eth0, eth1 } "
            "priority 0;\n ip saddr 192.0.2.0/24 \\\n  log\n }\n"
            " map m { type ipv4_addr : verdict; elements = { 192.0.2.1 : drop } }\n}\n",
            {"netdev t/c"},
        ),
    ],
)
def test_nft_text_parser(ruleset: str, chains: set[str]) -> None:
    assert {str(c) for c in nft_log_chains(ruleset)} == chains


def test_nft_includes_are_followed_under_the_root(tmp_path: Path) -> None:
    root = clean_tree(tmp_path)
    write(root, "/etc/nftables.conf", NFT_CONF + 'include "/etc/nftables.d/*.nft"\n')
    write(root, "/etc/nftables.d/10-ok.nft", "table ip a { chain b { accept } }\n")
    write(root, "/etc/nftables.d/20-log.nft", "table ip a { chain c { log } }\n")
    write(root, "/etc/nftables.d/30-loop.nft", 'include "nftables.conf"\n')
    assert [(f.code, f.where) for f in audit(root, CONFIG)] == [
        ("netfilter-log", "/etc/nftables.conf (ip a/c)")
    ]


def test_iptables_parser() -> None:
    text = RULES_V4_LOGGING + "*mangle\n-I PREROUTING 1 --jump LOG\n-A X -j ULOG\nCOMMIT\n"
    got = {str(c) for c in iptables_log_chains(text)}
    assert got == {"nat/POSTROUTING", "mangle/PREROUTING", "mangle/X"}
    assert iptables_log_chains(RULES_V4) == set()
    # An unbalanced quote (iptables-restore refuses the line): when in doubt, report.
    bad = '-A INPUT -m comment --comment "unbalanced -j LOG'
    assert {str(c) for c in iptables_log_chains(bad)} == {"filter/INPUT"}
