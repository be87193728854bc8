"""Inputs the fuzz targets (tests/fuzz) found crashing a parser, each now a clean refusal.

One table per parser: the input, and what it must end in instead of the
exception that escaped before.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.config import ConfigError, load_config
from nodeagent.wireguard import uapi_idle, uapi_text
from nodeagent.wireguard.backend import BackendError
from nodeagent.wireguard.uapi import UapiBackend
from nodeagent.wireguard.uapi_idle import UapiScrubPort

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


# --- UAPI replies ---------------------------------------------------------------------

_PEER = "public_key=" + "11" * 32 + "\nendpoint=192.0.2.1:51820\n"


_GET_CASES = [
    # ValueError from int("²"), which str.isdigit() accepts
    "listen_port=\u00b2\nerrno=0\n\n",
    # ValueError: beyond int()'s 4300 digits
    "listen_port=" + "9" * 5000 + "\nerrno=0\n\n",
    # was a 31-byte key: bytes.fromhex() skips spaces
    "public_key=" + "00" * 31 + "  \nerrno=0\n\n",
    # was an "errno" of 64 digits, quoted in the backend's error message
    "errno=" + "1" * 64 + "\n\n",
]
_IDLE_CASES = [
    # ValueError from int("²")
    _PEER + "last_handshake_time_sec=\u00b2\nerrno=0\n\n",
    _PEER + "last_handshake_time_nsec=\u00b2\nerrno=0\n\n",
    # ValueError: beyond int()'s 4300 digits
    _PEER + "last_handshake_time_sec=" + "9" * 5000 + "\nerrno=0\n\n",
    # OverflowError: a handshake time beyond any float
    _PEER + "last_handshake_time_sec=" + "9" * 400 + "\nerrno=0\n\n",
]


def _backend(text: str) -> UapiBackend:
    return UapiBackend("wgx", "/nonexistent", exchange_fn=lambda path, req: text)


@pytest.mark.parametrize("text", _GET_CASES, ids=lambda v: v[:30])
def test_uapi_get_reply_refused(text: str) -> None:
    with pytest.raises(uapi_text.UapiProtocolError):
        uapi_text.parse_get_reply(text)
    with pytest.raises(BackendError) as e:
        _backend(text).read()
    assert "1111111111111111" not in str(e.value)


@pytest.mark.parametrize("text", _GET_CASES + _IDLE_CASES, ids=lambda v: v[:30])
def test_uapi_idle_reply_refused(text: str) -> None:
    with pytest.raises(uapi_text.UapiProtocolError):
        uapi_idle.idle_from_reply(text, 180.0, 1e9)
    port = UapiScrubPort(_backend(text), exchange_fn=lambda path, req: text)
    with pytest.raises(BackendError) as e:
        port.idle_peers(180.0)
    assert "1111111111111111" not in str(e.value)
