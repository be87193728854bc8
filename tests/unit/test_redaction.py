"""The logging redaction filter: every address or key shape is masked, event text is kept."""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.privacy.logs import MASK, JsonFormatter, RedactFilter, redact, setup_logging

KEY = bytes(range(32))
B64 = base64.b64encode(KEY).decode()


@pytest.mark.parametrize(
    "text",
    [
        "192.0.2.1", "endpoint 192.0.2.1:51820", "10.8.0.2/32", "::1", "x ::1 y", "::",
        "fe80::1%eth0", "fe80::1ff:fe23:4567:890a%wg0", "[2001:db8::1]:51820",
        "http://[::1]:9586/", "2001:db8:0:0:0:0:0:1", "2001:db8::", "fd00:8::2/128",
        "::ffff:192.0.2.1", "dead:beef::", "ended at fe80::1.", B64, B64[:-1],
        base64.urlsafe_b64encode(bytes(range(100, 132))).decode(), KEY.hex(), KEY.hex().upper(),
        f"public_key={KEY.hex()}", f"key={B64},",
    ],
)  # fmt: skip
def test_masked(text: str) -> None:
    out = redact(f"a {text} b")
    assert MASK in out
    for part in ("192.0.2", "::1", "fe80", "2001", "db8", "dead", B64[:20], KEY.hex()[:20]):
        if part in text:
            assert part not in out, (text, out)


@pytest.mark.parametrize(
    "text",
    [
        "peer_sync applied added=12 removed=3 ms=41", "at 12:30:45", "version 0.1.0",
        "mac 02:42:ac:11:00:02", "std::vector", "x :5 y", "2026-11-21T12:00:00Z",
        "load percent=37 window_s=60", "wg_apply interface=wg0 messages=2",
    ],
)  # fmt: skip
def test_event_text_kept(text: str) -> None:
    assert redact(text) == text


@given(st.ip_addresses(), st.sampled_from(["", ":51820", "/32"]), st.sampled_from([" ", ",", "="]))
def test_any_address_is_masked(addr: ipaddress.IPv4Address | ipaddress.IPv6Address,
                               suffix: str, sep: str) -> None:  # fmt: skip
    text = f"x{sep}{addr if addr.version == 4 or suffix != ':51820' else f'[{addr}]'}{suffix}{sep}y"
    out = redact(text)
    assert str(addr) not in out or str(addr) in ("::",), (text, out)
    assert MASK in out


@given(st.binary(min_size=32, max_size=32))
def test_any_key_is_masked(key: bytes) -> None:
    for form in (base64.b64encode(key).decode(), key.hex()):
        out = redact(f"peer {form} gone")
        assert form not in out and out == f"peer {MASK} gone"


def test_filter_renders_args_and_exception_text() -> None:
    stream = io.StringIO()
    logger = logging.getLogger("nodeagent.test_redaction")
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug("peer %s at %s", B64, "198.51.100.7:51820")
        try:
            raise ValueError(f"bad endpoint [2001:db8::7]:1 for {KEY.hex()}")
        except ValueError:
            logger.exception("apply failed")
    finally:
        logger.removeHandler(handler)
    lines = [json.loads(line)["msg"] for line in stream.getvalue().splitlines()]
    assert lines[0] == f"peer {MASK} at {MASK}"
    assert lines[1] == f"apply failed error=ValueError: bad endpoint {MASK} for {MASK}"


def test_setup_logging_installs_the_filter(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", "text")
    root = logging.getLogger("nodeagent")
    try:
        logging.getLogger("nodeagent.x").debug("endpoint %s", "fe80::1%eth0")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        root.propagate = True
    err = capsys.readouterr().err
    assert "fe80" not in err and MASK in err
