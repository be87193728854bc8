"""Fuzz target: the YAML configuration (``load_config``).

Inputs: random text, random YAML documents, line and character mutations of
``config.example.yaml`` (with its secret files present, so that the unmutated
file is valid), values swapped for YAML's traps (explicit tags, impossible
dates, huge numbers, escapes to NUL or a lone surrogate), deep nesting, and
anchors and aliases (billion laughs). Every input ends in ``ConfigError`` or in
a ``Config``; nothing else escapes.
"""

from __future__ import annotations

import base64
import math
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.config.agent import MIN_SCRUB_IDLE_AFTER, Config, ConfigError, load_config
from tests.fuzz.harness import ended_well, target

REPO = Path(__file__).resolve().parents[2]
_dir = tempfile.TemporaryDirectory(prefix="fuzz-config-")
DIR = Path(_dir.name)
CONFIG = DIR / "config.yaml"

# The example, with its /etc/nodeagent files made (mode 600) and named relative to it.
EXAMPLE = (REPO / "config.example.yaml").read_text()
(DIR / "secrets").mkdir()
for _name in set(re.findall(r"/etc/nodeagent/([\w.-]+)", EXAMPLE)):
    _f = DIR / "secrets" / _name
    _f.write_text(base64.b64encode(bytes(range(32))).decode() + "\n")
    _f.chmod(0o600)
EXAMPLE = EXAMPLE.replace("/etc/nodeagent/", "secrets/")
# Its lines without the comments: mutating a comment changes nothing.
EXAMPLE_LINES = [
    line for line in EXAMPLE.splitlines(keepends=True) if line.strip() and line.lstrip()[0] != "#"
]

# Scalars that YAML reads as something else than text, or cannot read at all.
TRAPS = [
    "2001-13-01",
    "2001-02-30 25:61:61",
    "!!int ''",
    "!!int abc",
    "!!float x",
    "!!bool maybe",
    "!!timestamp soon",
    "!!binary '#'",
    "!!null x",
    "!!str",
    "!!set {a}",
    "!!omap [a]",
    "!!python/object/apply:os.system [true]",
    "!!python/name:os.system",
    "!env NODE",
    "!<tag:example.com,2000:x> y",
    "1e999",
    "-.inf",
    ".nan",
    "1" + "0" * 400,
    "1" * 5000,
    "0x" + "f" * 500,
    "0o17777",
    "1:2:3:4:5",
    "0b1010",
    "~",
    "yes",
    "off",
    "0644",
    '"a\\0b"',
    '"\\ud800"',
    '"\\U0010ffff"',
    '"\\x01"',
    "'h:\u00b2'",
    "'[::1]:\u00b2'",
    "'http://[::1'",
    "'https://user:pw@x/'",
    "'http://\uff0e\uff0e/'",
    "'/\u0000'",
    "'" + "a" * 300 + "'",
    "*nowhere",
    "&a x",
    "[",
    "{",
    "]",
    "? [a]",
    "<<: {a: 1}",
    "|",
    ">-",
    "'",
    '"',
    "- a",
    "{a: 1, a: 2}",
    "[[[[[[[[]]]]]]]]",
    "\t",
    "\ufeff",
    "",
]

trap = st.sampled_from(TRAPS)
yaml_text = st.text(
    st.one_of(st.sampled_from(list(":-?[]{},&*!|>'\"%@`#\n\t \\")), st.characters()),
    max_size=200,
)


def _mutate_lines(lines: list[str], ops: list[tuple[int, int, int, str]]) -> str:
    out = list(lines)
    for op, i, j, value in ops:
        if not out:
            break
        i %= len(out)
        j %= len(out)
        line = out[i]
        if op == 0:
            del out[i]
        elif op == 1:
            out.insert(j, line)
        elif op == 2:
            out[i], out[j] = out[j], out[i]
        elif op == 3:
            out[i] = "  " + line
        elif op == 4:
            out[i] = line[2:] if line.startswith("  ") else line
        elif op == 5 and ":" in line:
            # The value after the key (a list item's too) becomes a trap.
            head, _, _ = line.partition(":")
            out[i] = f"{head}: {value}\n"
        elif op == 6:
            out.insert(i, re.match(r"\s*(- )?", line).group(0) + value + "\n")  # type: ignore[union-attr]
        else:
            out[i] = line.replace(":", " ", 1) if op == 7 else line.rstrip("\n")
    return "".join(out)


def _mutate_chars(text: str, edits: list[tuple[int, int, str]]) -> str:
    for pos, n, new in edits:
        pos %= len(text) + 1
        text = text[:pos] + new + text[pos + n :]
    return text


mutated_example = st.builds(
    _mutate_lines,
    st.just(EXAMPLE_LINES),
    st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 999), st.integers(0, 999), trap),
        min_size=1,
        max_size=4,
    ),
)
char_mutated_example = st.builds(
    _mutate_chars,
    st.just(EXAMPLE),
    st.lists(
        st.tuples(
            st.integers(0, len(EXAMPLE)),
            st.integers(0, 3),
            st.one_of(st.sampled_from(list(":-[]{}&*!'\"\n \t#")), st.text(max_size=2)),
        ),
        min_size=1,
        max_size=4,
    ),
)
yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20)),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.one_of(
                st.sampled_from(["node", "name", "feed", "path", "url", "wireguard", "interfaces"]),
                st.text(max_size=10),
            ),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
yaml_documents = yaml_values.map(lambda v: yaml.safe_dump(v, allow_unicode=True))


def _laughs(depth: int, width: int, where: str) -> str:
    """Billion laughs: ``width ** depth`` items if the aliases were expanded, used at ``where``."""
    lines = ['l0: &l0 ["lol"]']
    for d in range(1, depth + 1):
        lines.append(f"l{d}: &l{d} [" + ", ".join([f"*l{d - 1}"] * width) + "]")
    lines.append(where.replace("LAUGH", f"*l{depth}"))
    return "\n".join(lines) + "\n"


LAUGHS = [
    _laughs(9, 10, "node: {name: LAUGH}"),
    _laughs(9, 10, "load: {interfaces: LAUGH}"),
    _laughs(9, 10, "wireguard: {interfaces: LAUGH}"),
    _laughs(9, 10, "http: {listen: LAUGH}"),
    _laughs(20, 2, "wireguard: {interfaces: [{name: wg0, addresses: LAUGH}]}"),
    "a: &a {node: *a}\n",  # a mapping that holds itself
    "node: &n {name: x, n: *n}\nfeed: {path: feed.json}\n",
    "wireguard: &w {interfaces: [*w, *w]}\n",
]
DEEP = [
    "node: " + "[" * 200_000,
    "node: " + "[" * 200_000 + "]" * 200_000,
    "node: " + "{a: " * 100_000 + "1" + "}" * 100_000,
    "node: " + "- " * 100_000 + "x",
    "".join(" " * i + "a:\n" for i in range(1000)),
    "node: " + "&a [" * 50_000,
    "!!a " * 100_000,
]


def check_config(config: Config) -> None:
    assert isinstance(config, Config)
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", config.node_name)
    assert (config.feed.url is None) != (config.feed.path is None)
    assert config.privacy.scrub_idle_after >= MIN_SCRUB_IDLE_AFTER
    for seconds in (config.privacy.scrub_interval, config.wireguard.resync_interval):
        assert math.isfinite(seconds) and seconds > 0
    names = [i.name for i in config.wireguard.interfaces]
    assert len(names) == len(set(names)) and all(0 < len(n) <= 15 for n in names)


def load(text: str | bytes) -> None:
    data = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    CONFIG.write_bytes(data)
    result = ended_well(lambda: load_config(CONFIG), ConfigError)
    if isinstance(result, ConfigError):
        assert result.problems and str(result)
        for p in result.problems:
            assert p.file == str(CONFIG) and (p.line is None or p.line >= 1)
    else:
        check_config(result)


def test_example_is_valid() -> None:
    CONFIG.write_text(EXAMPLE)
    check_config(load_config(CONFIG))


@target(150)
@given(st.one_of(yaml_text, st.binary(max_size=200)))
def test_random_text(text: str | bytes) -> None:
    load(text)


@target(150)
@given(yaml_documents)
def test_random_documents(text: str) -> None:
    load(text)


@target(300, round_examples=1000)
@given(st.one_of(mutated_example, char_mutated_example))
def test_mutated_example(text: str) -> None:
    load(text)


# The example's lines that give a key a value (list items included).
VALUE_LINES = [i for i, line in enumerate(EXAMPLE_LINES) if re.match(r"\s*(- )?\w+: \S", line)]


def _with_trap(i: int, value: str) -> str:
    lines = list(EXAMPLE_LINES)
    head, _, _ = lines[i].partition(":")
    lines[i] = f"{head}: {value}\n"
    return "".join(lines)


@target(200)
@given(st.builds(_with_trap, st.sampled_from(VALUE_LINES), trap))
def test_traps_as_values(text: str) -> None:
    load(text)


@pytest.mark.parametrize("text", LAUGHS + DEEP, ids=range(len(LAUGHS) + len(DEEP)))
def test_laughs_and_deep_nesting(text: str) -> None:
    load(text)
