"""Fuzz target: UAPI replies (``uapi_text``, ``uapi_idle``, ``UapiBackend``, ``UapiScrubPort``).

Inputs: random text, and ``get=1`` / ``set=1`` replies as wireguard-go writes
them (endpoints, handshake times and counters included) with lines dropped,
repeated, swapped or renamed, values swapped for hostile ones (hex with
spaces, non-ASCII digits, numbers of thousands of digits, lone surrogates)
and the ending spoiled. The text layer ends in ``UapiProtocolError`` or a
value; the backend and the scrub port end in ``BackendError`` or a value,
also when the socket conversation itself fails. No message quotes a key or an
address of the reply.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
from collections.abc import Sequence
from typing import Any

from hypothesis import event, given
from hypothesis import strategies as st

from nodeagent.core.backend import BackendError
from nodeagent.core.idle import PeerActivity, handshake_age, is_idle
from nodeagent.core.model import KEY_LEN, Device, Peer, Plan
from nodeagent.core.routes import AllowedIP
from nodeagent.wireguard.uapi import idle as uapi_idle
from nodeagent.wireguard.uapi import text as uapi_text
from nodeagent.wireguard.uapi.backend import UapiBackend
from nodeagent.wireguard.uapi.idle import UapiScrubPort
from tests.fuzz.harness import ended_well, target
from tests.peerdata import key
from tests.wgencode import format_get_reply

NOW = 1_800_000_000.0
KEYS = [key("uapi", i) for i in range(6)]
NETS = [AllowedIP.parse(n) for n in ("10.8.0.2/32", "10.8.1.0/24", "fd00:8::2/128", "::/0")]

allowed_ip = st.one_of(
    st.sampled_from(NETS),
    st.builds(
        lambda a, p: AllowedIP.parse(str(ipaddress.ip_network(f"{a}/{p}", strict=False))),
        st.ip_addresses(),
        st.integers(0, 32),
    ),
)
peer = st.builds(
    Peer,
    st.sampled_from(KEYS),
    st.frozensets(allowed_ip, max_size=3),
    st.one_of(st.none(), st.sampled_from(KEYS)),
)
device = st.builds(
    Device,
    # An all-zero private key reads back as none.
    st.one_of(st.none(), st.binary(min_size=KEY_LEN, max_size=KEY_LEN).filter(any)),
    st.integers(0, 65535),
    st.lists(peer, max_size=4).map(lambda ps: {p.public_key: p for p in ps}),
)


def reply_lines(dev: Device, activity: list[tuple[str | None, int, int]]) -> list[str]:
    """A ``get=1`` reply's lines as wireguard-go writes them, each peer with its activity."""
    lines = format_get_reply(dev).split("\n")[:-3]  # without errno and the blank line
    out: list[str] = []
    seen = 0
    for line in lines:
        out.append(line)
        if line.startswith("public_key="):
            endpoint, sec, nsec = activity[seen % len(activity)] if activity else (None, 0, 0)
            seen += 1
            if endpoint is not None:
                out.append(f"endpoint={endpoint}")
            out += [f"last_handshake_time_sec={sec}", f"last_handshake_time_nsec={nsec}"]
    return [*out, "errno=0"]


HOSTILE_VALUES = [
    "",
    "=",
    "\u00b2",
    "\u0663",
    "-1",
    "+1",
    " 1",
    "1_0",
    "0x10",
    "9" * 30,
    "9" * 5000,
    "1e9",
    "00" * 31 + " " * 2,
    "00 " * 21 + "0",
    "0" * 63 + "g",
    "0" * 64 + "0",
    "\ud800" * 64,
    "\ufffd" * 64,
    "10.8.0.2/33",
    "10.8.0.1/24",
    "10.8.0.2/\u00b2",
    "[::1]:51820",
    "192.0.2.1:51820",
    "true",
]
LINE_NAMES = [
    "public_key",
    "preshared_key",
    "private_key",
    "listen_port",
    "allowed_ip",
    "endpoint",
    "last_handshake_time_sec",
    "last_handshake_time_nsec",
    "errno",
    "remove",
    "",
]
hostile_value = st.integers(0, 4).flatmap(
    lambda n: st.text(max_size=70) if n == 2 else st.sampled_from(HOSTILE_VALUES)
)


def _mutate(lines: list[str], ops: list[tuple[int, int, int, str, str]]) -> list[str]:
    out = list(lines)
    for op, i, j, name, value in ops:
        if not out:
            break
        i, j = i % len(out), j % len(out)
        if op == 0:
            del out[i]
        elif op == 1:
            out.insert(j, out[i])
        elif op == 2:
            out[i], out[j] = out[j], out[i]
        elif op == 3:
            out[i] = out[i].partition("=")[0] + "=" + value
        elif op == 4:
            out[i] = name + "=" + out[i].partition("=")[2]
        elif op == 5:
            out.insert(i, f"{name}={value}")
        else:
            out[i] = out[i].replace("=", "", 1)
    return out


ENDINGS = ["\n\n", "\n", "", "\n\n\n", "\n\nerrno=0\n\n", " \n\n", "\r\n\r\n"]
activity = st.lists(
    st.tuples(
        st.one_of(st.none(), st.sampled_from(["192.0.2.1:51820", "[2001:db8::1]:51820", ""])),
        st.one_of(st.integers(0, 2**64), st.sampled_from([0, int(NOW) - 500, int(NOW)])),
        st.integers(0, 10**9),
    ),
    max_size=3,
)
mutations = st.lists(
    st.tuples(
        st.integers(0, 6),
        st.integers(0, 99),
        st.integers(0, 99),
        st.sampled_from(LINE_NAMES),
        hostile_value,
    ),
    max_size=3,
)


@st.composite
def get_replies(draw: st.DrawFn) -> str:
    lines = reply_lines(draw(device), draw(activity))
    if draw(st.integers(0, 3)) != 1:
        lines = _mutate(lines, draw(mutations))
    if draw(st.booleans()) and lines:
        # One line's value swapped for a hostile one: the most telling mutation.
        i = draw(st.integers(0, len(lines) - 1))
        lines[i] = lines[i].partition("=")[0] + "=" + draw(hostile_value)
    ending = draw(st.sampled_from(ENDINGS)) if draw(st.integers(0, 4)) == 2 else "\n\n"
    return "\n".join(lines) + ending


set_replies = st.one_of(
    st.builds(lambda v: f"errno={v}\n\n", st.one_of(st.integers(-(2**70), 2**70), hostile_value)),
    st.builds(
        lambda ls, e: "\n".join(ls) + e, st.lists(st.text(max_size=20)), st.sampled_from(ENDINGS)
    ),
)
any_reply = st.one_of(get_replies(), set_replies, st.text(max_size=300))


def check_device(dev: Device) -> None:
    assert isinstance(dev, Device)
    assert dev.private_key is None or len(dev.private_key) == KEY_LEN
    assert 0 <= dev.listen_port <= 65535
    for k, p in dev.peers.items():
        assert p.public_key == k and len(k) == KEY_LEN
        assert p.preshared_key is None or len(p.preshared_key) == KEY_LEN
        for ip in p.allowed_ips:
            assert AllowedIP.parse(str(ip)) == ip


def check_peers(peers: Any) -> None:
    assert isinstance(peers, list)
    for p in peers:
        assert isinstance(p, Peer) and len(p.public_key) == KEY_LEN


# --- the text layer -------------------------------------------------------------------


@target(300)
@given(any_reply)
def test_get_reply(text: str) -> None:
    result = ended_well(
        lambda: uapi_text.parse_get_reply(text), uapi_text.UapiProtocolError, source=text
    )
    if not isinstance(result, uapi_text.UapiProtocolError):
        dev, code = result
        check_device(dev)
        assert isinstance(code, int)


@target(200)
@given(any_reply)
def test_set_reply(text: str) -> None:
    result = ended_well(
        lambda: uapi_text.parse_set_reply(text), uapi_text.UapiProtocolError, source=text
    )
    assert isinstance(result, uapi_text.UapiProtocolError | int)


@target(100)
@given(device)
def test_get_reply_round_trip(dev: Device) -> None:
    assert uapi_text.parse_get_reply(format_get_reply(dev)) == (dev, 0)


@target(300)
@given(any_reply, st.floats(0, 1e6))
def test_idle_from_reply(text: str, idle_after: float) -> None:
    result = ended_well(
        lambda: uapi_idle.idle_from_reply(text, idle_after, NOW),
        uapi_text.UapiProtocolError,
        source=text,
    )
    if not isinstance(result, uapi_text.UapiProtocolError):
        check_peers(result)


# The scrub read as it was before it scanned for endpoint lines: every line read,
# every key checked. The scan must find what this finds.


def _line_key(value: str) -> bytes:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise uapi_text.UapiProtocolError("not hex") from None
    if len(raw) != KEY_LEN:
        raise uapi_text.UapiProtocolError("wrong length")
    return raw


def _line_spans(lines: Sequence[str], idle_after: float, now: float) -> list[tuple[int, int]]:
    spans: list[tuple[int, int]] = []
    start = 0
    key: bytes | None = None
    endpoint = False
    sec = nsec = 0
    for i, line in enumerate([*lines, "public_key="]):
        name, sep, value = line.partition("=")
        if not sep:
            raise uapi_text.UapiProtocolError("no '='")
        if name == "public_key":
            if key is not None and is_idle(
                PeerActivity(key, endpoint, handshake_age(sec, nsec, now)), idle_after
            ):
                spans.append((start, i))
            key, endpoint, sec, nsec, start = (_line_key(value) if value else None), False, 0, 0, i
        elif key is None:
            continue
        elif name == "endpoint":
            endpoint = bool(value)
        elif name in ("last_handshake_time_sec", "last_handshake_time_nsec"):
            if not (value.isascii() and value.isdigit()) or len(value) > 20:
                raise uapi_text.UapiProtocolError("bad time")
            if name == "last_handshake_time_sec":
                sec = int(value)
            else:
                nsec = int(value)
    return spans


def line_reader_idle(text: str, idle_after: float, now: float) -> list[Peer]:
    lines, code = uapi_text.split_reply(text)
    if code:
        raise uapi_text.UapiProtocolError("errno")
    spans = _line_spans(lines, idle_after, now)
    first = next((i for i, line in enumerate(lines) if line.startswith("public_key=")), len(lines))
    uapi_text.parse_device(lines[:first])
    if not spans:
        return []
    peers = uapi_text.parse_device(
        itertools.chain.from_iterable(lines[a:b] for a, b in spans)
    ).peers
    keys = [_line_key(lines[a].partition("=")[2]) for a, _ in spans]
    return [peers[k] for k in keys if k in peers]


def _blocks_with_endpoint(text: str) -> set[str]:
    """The hex keys of the peer blocks that hold a non-empty ``endpoint=`` line."""
    found: set[str] = set()
    key: str | None = None
    for line in text.split("\n"):
        name, _, value = line.partition("=")
        if name == "public_key":
            key = value
        elif name == "endpoint" and value and key is not None:
            found.add(key)
    return found


def _odd_key(text: str) -> bool:
    """A ``public_key`` line whose value is not 64 hex digits (the scan is stricter there)."""
    return any(
        line.startswith("public_key=")
        and not (len(line) == 75 and all(c in "0123456789abcdefABCDEF" for c in line[11:]))
        for line in text.split("\n")
    )


@target(300)
@given(st.one_of(get_replies(), any_reply), st.sampled_from([0.0, 180.0, 1e6]))
def test_idle_scan_agrees_with_the_line_reader(text: str, idle_after: float) -> None:
    """Where the old read found a value the scan finds the same (each key once); wherever
    the scan finds a value, every peer in it has an endpoint line in its block."""
    scan = ended_well(
        lambda: uapi_idle.idle_from_reply(text, idle_after, NOW),
        uapi_text.UapiProtocolError,
        source=text,
    )
    ref = ended_well(lambda: line_reader_idle(text, idle_after, NOW), uapi_text.UapiProtocolError)
    if isinstance(scan, list):
        with_endpoint = _blocks_with_endpoint(text)
        for p in scan:
            assert p.public_key.hex() in {k.lower() for k in with_endpoint}
        if isinstance(ref, list):
            # The line reader listed a key re-added twice as often as it had blocks.
            assert scan == list({p.public_key: p for p in ref}.values())
            if scan:
                event("scan and line reader agree on idle peers")
    elif isinstance(ref, list):
        assert _odd_key(text), "the scan refused what the line reader took"


@target(300)
@given(any_reply)
def test_endpoint_blocks(text: str) -> None:
    end = len(text)
    first = 0 if text.startswith("public_key=") else text.find("\npublic_key=")
    if first < 0:
        assert list(uapi_idle.endpoint_blocks(text, 0, end)) == []
        return
    last = first
    for a, b in uapi_idle.endpoint_blocks(text, first, end):
        assert last <= a < b <= end
        block = text[a:b]
        assert block.startswith("public_key=") and "\nendpoint=" in block
        assert "\npublic_key=" not in block
        last = b


# --- the backend and the scrub port over a scripted socket ------------------------------

FAILURES = [
    FileNotFoundError(errno.ENOENT, "x"),
    ConnectionRefusedError(errno.ECONNREFUSED, "x"),
    TimeoutError(),
    ConnectionResetError(errno.ECONNRESET, "x"),
    ConnectionError("UAPI daemon closed the connection before replying"),
    BrokenPipeError(errno.EPIPE, "x"),
    OSError(),
    OSError(-5, "x"),
    OSError(10**6, "x"),
]
answer = st.one_of(any_reply, st.sampled_from(FAILURES))


def scripted(answers: list[str | OSError]) -> Any:
    def exchange(path: str, request: bytes) -> str:
        assert request.endswith(b"\n\n")
        a = answers.pop(0) if answers else "errno=0\n\n"
        if isinstance(a, OSError):
            raise a
        return a

    return exchange


plan = st.builds(
    Plan,
    st.lists(peer, max_size=2).map(tuple),
    st.just(()),
    st.lists(st.sampled_from(KEYS), max_size=2).map(tuple),
)


@target(300)
@given(answer, answer, plan)
def test_backend(first: str | OSError, second: str | OSError, change: Plan) -> None:
    source = "\n".join(a for a in (first, second) if isinstance(a, str))
    backend = UapiBackend("wgfuzz0", "/nonexistent", exchange_fn=scripted([first, second]))
    dev = ended_well(backend.read, BackendError, source=source)
    if not isinstance(dev, BackendError):
        check_device(dev)
    result = ended_well(lambda: backend.apply(change), BackendError, source=source)
    assert result is None or isinstance(result, BackendError)


@target(300)
@given(answer, answer, st.lists(peer, min_size=1, max_size=2))
def test_scrub_port(first: str | OSError, second: str | OSError, peers: list[Peer]) -> None:
    source = "\n".join(a for a in (first, second) if isinstance(a, str))
    exchange = scripted([first, second])
    port = UapiScrubPort(
        UapiBackend("wgfuzz0", "/nonexistent", exchange_fn=exchange),
        clock=lambda: NOW,
        exchange_fn=exchange,
    )
    idle = ended_well(lambda: port.idle_peers(180.0), BackendError, source=source)
    if not isinstance(idle, BackendError):
        check_peers(idle)
    result = ended_well(lambda: port.readd(peers), BackendError, source=source)
    assert result is None or isinstance(result, BackendError)
