"""Inputs the fuzz targets (tests/fuzz) found crashing a parser, each now a clean refusal.

One table per parser: the input, and what it must end in instead of the
exception that escaped before.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from nodeagent.config.agent import ConfigError, HTTPConfig, load_config
from nodeagent.core.backend import BackendError
from nodeagent.load.counters import decode_dump, parse_links
from nodeagent.publish.http import HttpServer, HttpSettings, Sources
from nodeagent.wireguard.netlink import codec as nlwire
from nodeagent.wireguard.uapi import idle as uapi_idle
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.idle import UapiScrubPort

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
    # The key case above, with an endpoint: a peer that could be idle is read whole.
    "public_key=" + "00" * 31 + "  \nendpoint=192.0.2.1:51820\nerrno=0\n\n",
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


# The scrub read skips the lines of peers without an endpoint (none of them can be idle).
_NOT_READ_BY_SCRUB = [t for t in _GET_CASES if t.startswith("public_key=")]


@pytest.mark.parametrize(
    "text",
    [t for t in _GET_CASES if t not in _NOT_READ_BY_SCRUB] + _IDLE_CASES,
    ids=lambda v: v[:30],
)
def test_uapi_idle_reply_refused(text: str) -> None:
    with pytest.raises(uapi_text.UapiProtocolError):
        uapi_idle.idle_from_reply(text, 180.0, 1e9)
    port = UapiScrubPort(_backend(text), exchange_fn=lambda path, req: text)
    with pytest.raises(BackendError) as e:
        port.idle_peers(180.0)
    assert "1111111111111111" not in str(e.value)


@pytest.mark.parametrize("text", _NOT_READ_BY_SCRUB, ids=lambda v: v[:30])
def test_uapi_idle_skips_peers_without_endpoint(text: str) -> None:
    """Not read, and so never re-added: the reconciler's read refuses such a reply."""
    assert uapi_idle.idle_from_reply(text, 180.0, 1e9) == []


# --- netlink dumps --------------------------------------------------------------------


def _nla(atype: int, payload: bytes) -> bytes:
    n = 4 + len(payload)
    return struct.pack("=HH", n, atype) + payload + bytes(-n % 4)


def _device_message(ip_element_attrs: bytes) -> bytes:
    """A GET_DEVICE reply whose only peer's only allowed IP ends the buffer."""
    element = _nla(nlwire.NLA_F_NESTED, ip_element_attrs)
    peer = _nla(
        nlwire.NLA_F_NESTED,
        _nla(nlwire.WGPEER_A_PUBLIC_KEY, bytes(range(32)))
        + _nla(nlwire.NLA_F_NESTED | nlwire.WGPEER_A_ALLOWEDIPS, element),
    )
    payload = nlwire.GENL_HDR.pack(0, 1, 0) + _nla(
        nlwire.NLA_F_NESTED | nlwire.WGDEVICE_A_PEERS, peer
    )
    return nlwire.NLMSG_HDR.pack(16 + len(payload), 30, nlwire.NLM_F_MULTI, 7, 0) + payload


@pytest.mark.parametrize(
    "element",
    [
        # IndexError: a CIDR_MASK attribute without its byte
        _nla(nlwire.WGALLOWEDIP_A_CIDR_MASK, b""),
        # struct.error: a FAMILY attribute without its two bytes (with one, read from padding)
        _nla(nlwire.WGALLOWEDIP_A_FAMILY, b""),
        _nla(nlwire.WGALLOWEDIP_A_FAMILY, b"\x02"),
        # read the next attribute's length as the prefix length
        _nla(nlwire.WGALLOWEDIP_A_FAMILY, struct.pack("=H", 2))
        + _nla(nlwire.WGALLOWEDIP_A_CIDR_MASK, b"")
        + _nla(nlwire.WGALLOWEDIP_A_IPADDR, bytes(4)),
    ],
    ids=["cidr-empty", "family-empty", "family-one-byte", "cidr-reads-next"],
)
def test_netlink_allowed_ip_refused(element: bytes) -> None:
    msg = _device_message(element)
    with pytest.raises(nlwire.DecodeError):
        nlwire.DeviceDecoder().add(msg, nlwire.NLMSG_HDR.size, len(msg))


@pytest.mark.parametrize(
    "dump",
    [
        # struct.error from pyroute2: an RTM_NEWLINK without its struct ifinfomsg
        struct.pack("=IHHII", 16, 16, 2, 1, 0),
        # NetlinkNLADecodeError from pyroute2: IFLA_STATS64 runs past the message's end
        bytes.fromhex(
            "3400000010000274d2000100000000000000000001009e9b00e34310"
            "00000000000005000300000000000c001700fcb89627196b"
        ),
    ],
    ids=["no-ifinfomsg", "bad-nla"],
)
def test_link_dump_refused(dump: bytes) -> None:
    with pytest.raises(ValueError):
        decode_dump(dump)


def test_link_stats_too_short_are_skipped() -> None:
    # pyroute2 hands over the raw bytes of an IFLA_STATS64 too short for its struct.
    body = struct.pack("=BBHiII", 0, 0, 1, 2, 0, 0) + _nla(3, b"eth0\0") + _nla(23, bytes(8))
    dump = struct.pack("=IHHII", 16 + len(body), 16, 2, 1, 0) + body
    assert parse_links(decode_dump(dump), {"eth0"}) == {}


# --- HTTP requests --------------------------------------------------------------------


@pytest.mark.parametrize(
    "line", [b"GET /status", b"GET /healthz", b"POST /status", b"GET /nowhere"]
)
async def test_http_expect_not_utf8_is_417(line: bytes) -> None:
    # Was a 500: aiohttp's own Expect handler quotes the value, and fails on non-UTF-8.
    sources = Sources(lambda: b"{}", CollectorRegistry(), lambda: None, lambda: None)
    config = HTTPConfig(listen=("127.0.0.1:0",), token_file=None, tls=None)
    async with HttpServer(sources, HttpSettings(config, None, None)) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.ports[0])
        writer.write(line + b" HTTP/1.1\r\nHost: x\r\nExpect: \x80\r\nConnection: close\r\n\r\n")
        status = await reader.readline()
        writer.close()
        await writer.wait_closed()
    assert status.startswith(b"HTTP/1.1 417 ")
