"""Inputs the fuzz targets (tests/fuzz) found crashing a parser, each now a clean refusal.

One table per parser: the input, and what it must end in instead of the
exception that escaped before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.config import ConfigError, load_config

# --- the YAML configuration ---------------------------------------------------------

_OK = "node: {name: n1}\nfeed: {path: feed.json}\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # ValueError, IndexError, KeyError, AttributeError from PyYAML's constructors
        ("node: {name: 2001-13-01}\n", "node.name: cannot be read as !!timestamp"),
        ("node: {name: !!int ''}\n", "node.name: cannot be read as !!int"),
        ("node: {name: !!bool maybe}\n", "node.name: cannot be read as !!bool"),
        ("node: {name: !!timestamp soon}\n", "node.name: cannot be read as !!timestamp"),
        ("node: {name: n1}\nfeed: {path: f, max_bytes: " + "1" * 5000 + "}\n", "cannot be read"),
        # ReaderError: a control character, refused before parsing
        ("node: {name: n\x01}\n", ":1: not valid YAML: unacceptable character #x0001"),
        # RecursionError: PyYAML composes nested collections recursively
        ("node: " + "[" * 200_000, "not valid YAML: nested too deeply"),
        # OverflowError: an integer beyond any float
        (_OK[:-2] + ", max_removal_ratio: 1" + "0" * 400 + "}\n", "must be a finite number"),
        # ValueError from urlsplit
        ("node: {name: n1}\nfeed: {url: 'http://[::1'}\n", "feed.url: must be an http://"),
        # ValueError from int("²"), which str.isdigit() accepts
        (_OK + "http: {listen: ['h:\u00b2']}\n", "needs a port 1..65535"),
        (_OK + "http: {listen: ['[::1]:\u00b2']}\n", "needs a port 1..65535"),
        # ValueError from os.stat: a NUL, a lone surrogate
        (_OK + 'http: {tls: {cert_file: "a\\0b", key_file: k}}\n', "cert_file: is not a usable"),
        (_OK + 'http: {tls: {cert_file: "\\ud800", key_file: k}}\n', "cert_file: is not a usable"),
    ],
    ids=lambda v: v[:40] if isinstance(v, str) and len(v) > 40 else None,
)
def test_config_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert message in str(e.value)
