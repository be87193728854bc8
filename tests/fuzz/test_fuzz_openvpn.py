"""Fuzz target: the OpenVPN management protocol parser (``nodeagent.openvpn.protocol.Parser``).

Inputs: streams of lines as OpenVPN 2.6 writes them (``>CLIENT:`` blocks with
address, port and hardware-address ENV lines, replies, ``>HOLD``, ``>LOG``,
``>BYTECOUNT``, ``>STATE``, unknown notifications, the password prompt), with
``\\r\\n`` or ``\\n``, lines dropped, swapped, cut, made huge (past the 64 KiB
bound, up to 1 MB), and the whole stream split into pieces of any size and
cut off at any point. Every input ends in events only (nothing raises), the
same events however the stream is split, and no event holds an address, a
port or any ENV value but the username, password and common name.
"""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from nodeagent.openvpn.protocol import (
    MAX_LINE,
    BlockCut,
    ClientAuth,
    ClientDisconnect,
    ClientEstablished,
    Event,
    LineTooLong,
    Notification,
    Parser,
    PasswordPrompt,
    ProtocolViolation,
    Reply,
    command,
)
from tests.fuzz.harness import ended_well, target

SECRET_VALUES = ["198.51.100.23", "2001:db8::23", "51234", "02:00:5e:00:53:01", "10.8.0.6"]
DROPPED_ENV = [
    f"{k}={v}"
    for k, v in [
        ("untrusted_ip", SECRET_VALUES[0]),
        ("untrusted_ip6", SECRET_VALUES[1]),
        ("untrusted_port", SECRET_VALUES[2]),
        ("trusted_ip", SECRET_VALUES[0]),
        ("trusted_port", SECRET_VALUES[2]),
        ("IV_HWADDR", SECRET_VALUES[3]),
        ("ifconfig_pool_remote_ip", SECRET_VALUES[4]),
        ("IV_PLAT", "linux"),
    ]
]
KEPT_ENV = ["username=u48151623", "password=pa,ss=w0rd", "common_name=u48151623", "username="]

ids = st.integers(0, 2**32).map(str) | st.sampled_from(["", "-1", "x", "1" * 20, "\u0663"])
env_line = st.sampled_from(DROPPED_ENV + KEPT_ENV).map(lambda e: f">CLIENT:ENV,{e}")


@st.composite
def block(draw: st.DrawFn) -> list[str]:
    kind = draw(st.sampled_from(["CONNECT", "REAUTH", "ESTABLISHED", "DISCONNECT", "CR_RESPONSE"]))
    head = f">CLIENT:{kind},{draw(ids)}" + (f",{draw(ids)}" if draw(st.booleans()) else "")
    lines = [head, *draw(st.lists(env_line, max_size=8))]
    if draw(st.integers(0, 5)) != 0:
        lines.append(">CLIENT:ENV,END")
    return lines


single = st.sampled_from(
    [
        "SUCCESS: client-auth command succeeded",
        "ERROR: unknown command, enter 'help' for more options",
        ">HOLD:Waiting for hold release:0",
        ">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info",
        f">LOG:1700000000,I,{SECRET_VALUES[0]}:{SECRET_VALUES[2]} TLS: Initial packet",
        ">BYTECOUNT:1234,5678",
        ">BYTECOUNT_CLI:3,1234,5678",
        f">STATE:1700000000,CONNECTED,SUCCESS,10.8.0.1,{SECRET_VALUES[0]},1194",
        f">CLIENT:ADDRESS,3,{SECRET_VALUES[4]},1",
        ">NEW-THING:whatever",
        ">lower:x",
        ">",
        "ENTER PASSWORD:",
        "",
        "END",
        "random words",
    ]
)
line_groups = st.lists(
    st.one_of(block(), single.map(lambda s: [s]), st.text(max_size=40).map(lambda s: [s])),
    max_size=12,
)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    lines = [line for group in draw(line_groups) for line in group]
    if lines and draw(st.integers(0, 4)) == 0:
        # One line made huge: past the bound, sometimes far past it.
        i = draw(st.integers(0, len(lines) - 1))
        size = draw(st.sampled_from([MAX_LINE - 1, MAX_LINE, MAX_LINE + 1, 1 << 20]))
        lines[i] = lines[i] + "A" * size
    if lines and draw(st.booleans()):
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
    eol = draw(st.sampled_from(["\r\n", "\n"]))
    data = "".join(line + eol for line in lines).encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]  # cut off anywhere
    return data


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in points:
        pieces.append(data[last:p])
        last = p
    return [*pieces, data[last:]]


def run(chunks: list[bytes]) -> list[Event]:
    p = Parser()
    out: list[Event] = []
    for c in chunks:
        out += p.feed(c)
    return out + p.close()


def check(events: list[Event]) -> None:
    kinds = (
        PasswordPrompt,
        Reply,
        Notification,
        ClientAuth,
        ClientEstablished,
        ClientDisconnect,
        LineTooLong,
        BlockCut,
        ProtocolViolation,
    )
    for e in events:
        assert isinstance(e, kinds) or type(e).__name__ == "Hold"
        if isinstance(e, ClientAuth | ClientEstablished):
            held = [e.username or "", e.common_name or ""]
            if isinstance(e, ClientAuth):
                held.append((e.password or b"").decode("utf-8", "replace"))
            for value in held:
                for secret in SECRET_VALUES:
                    assert secret not in value, "a dropped ENV value survived parsing"
        for secret in SECRET_VALUES:
            assert secret not in repr(e)


@target(300, round_examples=300)
@given(streams(), st.lists(st.integers(0, 2**20), max_size=6))
def test_stream_in_any_pieces(data: bytes, cuts: list[int]) -> None:
    whole = ended_well(lambda: run([data]), (), source=data)
    pieces = ended_well(lambda: run(split(data, cuts)), (), source=data)
    assert isinstance(whole, list)
    check(whole)
    assert pieces == whole


@target(300)
@given(st.binary(max_size=2000), st.lists(st.integers(0, 4000), max_size=4))
def test_random_bytes(data: bytes, cuts: list[int]) -> None:
    events = ended_well(lambda: run(split(data, cuts)), (), source=data)
    assert isinstance(events, list)


def unquote(token: str) -> str:
    """One argument read back as OpenVPN's parse_line reads it."""
    if not token.startswith('"'):
        assert " " not in token and '"' not in token and "\\" not in token
        return token
    assert token.endswith('"') and len(token) >= 2
    out, i, body = [], 0, token[1:-1]
    while i < len(body):
        if body[i] == "\\":
            assert body[i + 1] in '\\"'
            out.append(body[i + 1])
            i += 2
        else:
            assert body[i] != '"'
            out.append(body[i])
            i += 1
    return "".join(out)


@target(200)
@given(st.text(max_size=60))
def test_quote_round_trips_or_refuses(arg: str) -> None:
    result = ended_well(lambda: command("kill", arg), ValueError)
    if isinstance(result, ValueError):
        assert any(c in arg for c in "\r\n\0") or any(0xD800 <= ord(c) < 0xE000 for c in arg)
        return
    assert result.startswith(b"kill ") and result.endswith(b"\n") and result.count(b"\n") == 1
    assert unquote(result[5:-1].decode()) == arg
