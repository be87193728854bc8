"""The management protocol parser and command quoting: table tests with literal bytes."""

from __future__ import annotations

import pytest

from nodeagent.openvpn.protocol import (
    MAX_LINE,
    BlockCut,
    ClientAuth,
    ClientDisconnect,
    ClientEstablished,
    Event,
    Hold,
    LineTooLong,
    Notification,
    Parser,
    PasswordPrompt,
    ProtocolViolation,
    Reply,
    command,
    quote,
)

CONNECT = (
    b">CLIENT:CONNECT,7,2\r\n"
    b">CLIENT:ENV,untrusted_ip=198.51.100.7\r\n"
    b">CLIENT:ENV,untrusted_port=51234\r\n"
    b">CLIENT:ENV,untrusted_ip6=2001:db8::7\r\n"
    b">CLIENT:ENV,trusted_ip=198.51.100.7\r\n"
    b">CLIENT:ENV,IV_HWADDR=02:00:00:00:00:01\r\n"
    b">CLIENT:ENV,IV_PLAT=linux\r\n"
    b">CLIENT:ENV,common_name=u1\r\n"
    b">CLIENT:ENV,username=u1\r\n"
    b">CLIENT:ENV,password=p=a,s s\r\n"
    b">CLIENT:ENV,END\r\n"
)


def parse(*chunks: bytes) -> list[Event]:
    p = Parser()
    out: list[Event] = []
    for c in chunks:
        out += p.feed(c)
    return out


def test_connect_block_keeps_only_what_the_decision_needs() -> None:
    (ev,) = parse(CONNECT)
    assert isinstance(ev, ClientAuth)
    assert (ev.reauth, ev.cid, ev.kid, ev.username, ev.common_name) == (False, 7, 2, "u1", "u1")
    assert ev.password == b"p=a,s s"
    text = repr(ev)
    for secret in ("u1", "p=a", "198.51.100.7", "2001:db8", "51234", "02:00"):
        assert secret not in text


def test_the_parser_holds_no_address_it_read() -> None:
    p = Parser()
    p.feed(CONNECT[:-20])  # the block is open, its address lines read
    assert p._block is not None
    assert set(p._block.env) <= {"username", "password", "common_name"}


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1000])
def test_any_split_gives_the_same_events(size: int) -> None:
    data = b">INFO:OpenVPN Management Interface Version 5\r\n" + CONNECT + b"SUCCESS: ok\r\n"
    chunks = [data[i : i + size] for i in range(0, len(data), size)]
    assert parse(*chunks) == parse(data)
    assert [type(e) for e in parse(data)] == [Notification, ClientAuth, Reply]


def test_lf_only_and_crlf_alike() -> None:
    assert parse(CONNECT.replace(b"\r\n", b"\n")) == parse(CONNECT)


def test_password_prompt_without_newline() -> None:
    p = Parser()
    assert p.feed(b"ENTER PASS") == []
    assert p.feed(b"WORD:") == [PasswordPrompt()]
    assert p.feed(b"SUCCESS: password is correct\r\n") == [Reply(True, "password is correct")]
    # Text after the prompt is a line of its own, however the bytes were split.
    data = b"ENTER PASSWORD:" + b"A" * (MAX_LINE + 5) + b"\n>HOLD:x\n"
    assert parse(data) == parse(data[:20], data[20:]) == [PasswordPrompt(), LineTooLong(), Hold()]


def test_replies_and_notifications() -> None:
    events = parse(
        b"SUCCESS: client-kill command succeeded\r\n"
        b"ERROR: common name 'x' not found\r\n"
        b">HOLD:Waiting for hold release:0\r\n"
        b">LOG:1700000000,I,198.51.100.7:1194 something\r\n"
        b">BYTECOUNT:123,456\r\n"
        b">BYTECOUNT_CLI:3,123,456\r\n"
        b">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.1,198.51.100.7\r\n"
        b">CLIENT:ADDRESS,3,10.8.0.6,1\r\n"
        b">whatever lower:1\r\n"
        b">NOCOLON\r\n"
        b"garbage\r\n"
        b"\r\n"
    )
    assert events == [
        Reply(True, "client-kill command succeeded"),
        Reply(False, "common name 'x' not found"),
        Hold(),
        Notification("LOG"),
        Notification("BYTECOUNT"),
        Notification("BYTECOUNT_CLI"),
        Notification("STATE"),
        Notification("CLIENT"),
        Notification("UNKNOWN"),
        ProtocolViolation("notification without a colon"),
        ProtocolViolation("line that is neither a reply nor a notification"),
    ]
    assert all("198.51" not in repr(e) and "10.8" not in repr(e) for e in events)


def test_interleaved_notifications_inside_a_block() -> None:
    mid = CONNECT.index(b">CLIENT:ENV,username")
    data = CONNECT[:mid] + b">LOG:x\r\nSUCCESS: y\r\n" + CONNECT[mid:]
    events = parse(data)
    assert [type(e) for e in events] == [Notification, Reply, ClientAuth]
    assert isinstance(events[2], ClientAuth) and events[2].username == "u1"


def test_reauth_established_disconnect() -> None:
    events = parse(
        b">CLIENT:REAUTH,4,9\r\n>CLIENT:ENV,username=a\r\n>CLIENT:ENV,password=b\r\n"
        b">CLIENT:ENV,END\r\n"
        b">CLIENT:ESTABLISHED,4\r\n>CLIENT:ENV,common_name=a\r\n>CLIENT:ENV,END\r\n"
        b">CLIENT:DISCONNECT,4\r\n>CLIENT:ENV,bytes_received=1\r\n>CLIENT:ENV,END\r\n"
    )
    assert events == [
        ClientAuth(True, 4, 9, "a", b"b", None),
        ClientEstablished(4, None, "a"),
        ClientDisconnect(4),
    ]


def test_block_cut_by_disconnect_or_new_header() -> None:
    p = Parser()
    assert p.feed(CONNECT[:60]) == []
    assert p.close() == [BlockCut()]
    assert p.close() == []
    events = parse(b">CLIENT:CONNECT,1,0\r\n>CLIENT:ENV,username=a\r\n" + CONNECT)
    assert [type(e) for e in events] == [BlockCut, ClientAuth]
    outside = ProtocolViolation("client environment outside a block")
    assert parse(b">CLIENT:ENV,END\r\n") == [outside]
    assert parse(b">CLIENT:CONNECT,x,0\r\n") == [
        ProtocolViolation("client header without numeric ids")
    ]


def test_line_over_the_bound_is_skipped_and_the_parser_resyncs() -> None:
    p = Parser()
    big = b">LOG:" + b"A" * (MAX_LINE + 10)
    events = p.feed(big[: MAX_LINE // 2]) + p.feed(big[MAX_LINE // 2 :])
    assert events == [LineTooLong()]
    # The rest of the long line, then a good one.
    assert p.feed(b"B" * (1 << 20) + b"\r\nSUCCESS: ok\r\n") == [Reply(True, "ok")]
    # A long line given whole.
    assert parse(b"X" * (MAX_LINE + 1) + b"\n>HOLD:x\n") == [LineTooLong(), Hold()]
    assert parse(b"x" * (1 << 20)) == [LineTooLong()]


def test_too_many_env_lines_cut_the_block() -> None:
    data = b">CLIENT:CONNECT,1,0\n" + b">CLIENT:ENV,a=b\n" * 2000 + b">CLIENT:ENV,END\n"
    events = parse(data)
    assert events[0] == BlockCut()
    assert all(isinstance(e, BlockCut | ProtocolViolation) for e in events)


def test_quoting() -> None:
    assert quote("u48151623") == "u48151623"
    assert quote("a b") == '"a b"'
    assert quote('a"b\\c') == '"a\\"b\\\\c"'
    assert quote("") == '""'
    with pytest.raises(ValueError):
        quote("a\nb")
    assert command("client-deny", 3, 1, "authentication failed") == (
        b'client-deny 3 1 "authentication failed"\n'
    )
    assert command("kill", "u1@x.y") == b"kill u1@x.y\n"
