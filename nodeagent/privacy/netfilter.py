"""Packet-logging rules in a netfilter ruleset: which chains hold a LOG/NFLOG target or nft ``log``.

A logger bound in ``/proc/net/netfilter/nf_log`` records nothing by itself; the
rules that send packets to it do, each packet's addresses and ports. A ruleset
comes in three forms, each with a pure parser here: ``nft -j list ruleset``,
nft's own syntax (``nft list ruleset``, ``/etc/nftables.conf``) and
``iptables-save``. They return the chains that log, never a rule's text: a
prefix or a comment may hold anything.

:func:`run_command` is the one shell: it lists the live ruleset with a timeout.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable, Sequence
from typing import NamedTuple

#: Runs a command and returns its standard output; None when the program is not
#: installed. Raises CommandFailed when it fails or times out.
Runner = Callable[[Sequence[str]], str | None]

COMMAND_TIMEOUT = 10.0
LOG_TARGETS = frozenset({"LOG", "NFLOG", "ULOG"})
NFT_FAMILIES = frozenset({"ip", "ip6", "inet", "arp", "bridge", "netdev"})
# Where nft and iptables live, also when the caller's PATH lacks the sbin directories.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")


class CommandFailed(Exception):
    """A ruleset command exited with an error or timed out (the text never quotes its output)."""


class Chain(NamedTuple):
    """Where a logging rule is. ``family`` is empty for iptables, whose command says it."""

    family: str
    table: str
    name: str

    def __str__(self) -> str:
        where = f"{self.table}/{self.name}"
        return f"{self.family} {where}" if self.family else where


def run_command(argv: Sequence[str]) -> str | None:
    """The standard output of ``argv``; None if the program is not installed."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    exe = shutil.which(argv[0], path=path)
    if exe is None:
        return None
    try:
        done = subprocess.run(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise CommandFailed(f"timed out after {COMMAND_TIMEOUT:.0f}s") from None
    except OSError as e:
        raise CommandFailed(e.strerror or "could not start") from None
    if done.returncode:
        raise CommandFailed(f"exit status {done.returncode}")
    return done.stdout


# --- nft -j list ruleset -----------------------------------------------------------


def nft_json_log_chains(text: str) -> set[Chain]:
    """Chains with a ``log`` statement or an xt LOG/NFLOG target, from ``nft -j list ruleset``.

    ValueError if the text is not such a document.
    """
    doc = json.loads(text)
    items = doc.get("nftables") if isinstance(doc, dict) else None
    if not isinstance(items, list):
        raise ValueError("not an nft JSON ruleset")
    out: set[Chain] = set()
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        if not isinstance(rule, dict):
            continue
        exprs = rule.get("expr")
        if isinstance(exprs, list) and any(_json_logs(e) for e in exprs):
            out.add(Chain(*(str(rule.get(k, "?")) for k in ("family", "table", "chain"))))
    return out


def _json_logs(expr: object) -> bool:
    if not isinstance(expr, dict):
        return False
    xt = expr.get("xt")
    if isinstance(xt, dict):
        # iptables-nft rules that nft cannot translate back into its own syntax
        return xt.get("type") == "target" and xt.get("name") in LOG_TARGETS
    return "log" in expr


# --- nft syntax ------------------------------------------------------------------------

# Strings first, so that a "#" or a brace inside one is not taken for syntax.
_NFT_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|#[^\n]*|[{};\n]|[^\s{};#"]+')
_RULE_VERBS = frozenset({"add", "insert", "replace", "create"})
_ANON = Chain("", "", "")


def nft_log_chains(text: str) -> set[Chain]:
    """Chains with a ``log`` statement or an xt LOG/NFLOG target, in nft's syntax.

    Takes what ``nft list ruleset`` prints and what ``nft -f`` reads: table and
    chain blocks, and ``add rule`` commands (includes must be expanded first).
    Anonymous sets, maps and device lists inside a rule are skipped, as are
    named sets' and maps' blocks.
    """
    out: set[Chain] = set()
    # Each open block: "table" or "chain" (with where it is), "anon" inside a
    # rule, "other" for sets, maps, flowtables and their elements.
    stack: list[tuple[str, Chain]] = []
    stmt: list[str] = []

    def end() -> None:
        if stmt:
            _nft_statement(stmt, stack[-1] if stack else None, out)
            stmt.clear()

    for m in _NFT_TOKEN.finditer(text.replace("\\\n", " ")):
        tok = m.group()
        kind = stack[-1][0] if stack else ""
        if tok.startswith("#"):
            continue
        if kind == "anon":
            if tok == "{":
                stack.append(("anon", _ANON))
            elif tok == "}":
                stack.pop()
        elif tok in ("\n", ";"):
            end()
        elif tok == "{":
            if kind == "chain" or _is_rule_command(stmt):
                stack.append(("anon", _ANON))  # the rule goes on after the block
            else:
                stack.append(_nft_block(stmt, stack[-1] if stack else None))
                stmt.clear()
        elif tok == "}":
            end()
            if stack:
                stack.pop()
        else:
            stmt.append(tok)
    end()
    return out


def _is_rule_command(words: Sequence[str]) -> bool:
    # "add" may be left out: "rule inet filter input ..." is an add.
    return words[:1] == ["rule"] or (
        len(words) >= 2 and words[0] in _RULE_VERBS and words[1] == "rule"
    )


def _where(words: Sequence[str]) -> Chain:
    """``[family] table [chain]`` of a command (the family defaults to ip, as in nft)."""
    family = "ip"
    if len(words) >= 2 and words[0] in NFT_FAMILIES:
        family, words = words[0], words[1:]
    table = words[0] if words else "?"
    chain = words[1] if len(words) >= 2 else ""
    return Chain(family, table.strip('"'), chain.strip('"'))


def _nft_block(header: Sequence[str], parent: tuple[str, Chain] | None) -> tuple[str, Chain]:
    words = list(header[1:] if header[:1] and header[0] in _RULE_VERBS else header)
    if words[:1] == ["table"]:
        return "table", _where(words[1:])
    if words[:1] == ["chain"]:
        if parent is not None and parent[0] == "table":
            name = words[1].strip('"') if len(words) >= 2 else "?"
            return "chain", parent[1]._replace(name=name)
        return "chain", _where(words[1:])  # add chain inet filter input { ... }
    return "other", _ANON


def _nft_statement(words: Sequence[str], block: tuple[str, Chain] | None, out: set[Chain]) -> None:
    if block is not None and block[0] == "chain":
        if _logs(words):
            out.add(block[1])
    elif _is_rule_command(words):
        rest = words[1:] if words[0] == "rule" else words[2:]
        where = _where(rest)
        skip = 3 if rest and rest[0] in NFT_FAMILIES else 2
        if _logs(rest[skip:]):
            out.add(where)


def _logs(words: Sequence[str]) -> bool:
    for i, w in enumerate(words):
        if w == "log" and (i == 0 or words[i - 1] not in ("jump", "goto")):
            return True
        if w == "target" and i + 1 < len(words) and words[i + 1].strip('"') in LOG_TARGETS:
            return True
    return False


# --- iptables-save -----------------------------------------------------------------------


def iptables_log_chains(text: str) -> set[Chain]:
    """Chains with a LOG, NFLOG or ULOG target, from ``iptables-save`` output or a saved file."""
    out: set[Chain] = set()
    table = "filter"
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("*"):
            table = line[1:].strip() or "filter"
            continue
        if not line.startswith("-"):
            continue
        try:
            words = shlex.split(line)
        except ValueError:  # an unbalanced quote: look at every word rather than miss a rule
            words = line.split()
        if len(words) < 2 or words[0] not in ("-A", "--append", "-I", "--insert"):
            continue
        if any(
            w in ("-j", "--jump") and nxt in LOG_TARGETS for w, nxt in itertools.pairwise(words)
        ):
            out.add(Chain("", table, words[1]))
    return out
