"""Link counters from literal rtnetlink messages (bytes as the kernel sends them); link speed."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from nodeagent.load.counters import (
    LinkCounters,
    LinkMessage,
    decode_dump,
    getlink_request,
    link_speed_bps,
    parse_links,
)

IFLA_IFNAME = 3
IFLA_STATS = 7
IFLA_STATS64 = 23
RTM_NEWLINK = 16
NLMSG_DONE = 3


def nla(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def stats64(rx_bytes: int, tx_bytes: int, fields: int = 24) -> bytes:
    # struct rtnl_link_stats64: rx_packets, tx_packets, rx_bytes, tx_bytes, then errors etc.
    values = [7, 9, rx_bytes, tx_bytes] + [0] * (fields - 4)
    return nla(IFLA_STATS64, struct.pack(f"={fields}Q", *values))


def stats32(rx_bytes: int, tx_bytes: int) -> bytes:
    return nla(IFLA_STATS, struct.pack("=23I", 7, 9, rx_bytes, tx_bytes, *[0] * 19))


def newlink(index: int, name: str, *attrs: bytes, kind: int = RTM_NEWLINK) -> bytes:
    body = struct.pack("=BBHiII", 0, 0, 1, index, 0x1043, 0)
    body += nla(IFLA_IFNAME, name.encode() + b"\0") + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), kind, 2, 1, 0) + body


def done() -> bytes:
    return struct.pack("=IHHIIi", 20, NLMSG_DONE, 2, 1, 0, 0)


BIG = 2**40 + 12345  # beyond 32 bits: the 64-bit counter must be the one read


def test_parse_dump_of_literal_messages() -> None:
    dump = (
        newlink(1, "lo", stats32(5, 5), stats64(5, 5))
        + newlink(2, "eth0", stats32(BIG & 0xFFFFFFFF, 1), stats64(BIG, 2**33))
        + newlink(3, "wg0", stats64(10, 20))
        + newlink(7, "eth1", stats64(0, 0, fields=23))
        + done()
    )
    links = parse_links(decode_dump(dump), {"eth0", "eth1", "eth9"})
    assert links == {
        "eth0": LinkCounters(2, BIG, 2**33),
        "eth1": LinkCounters(7, 0, 0),
    }


def test_link_without_64bit_stats_is_absent() -> None:
    links = parse_links(decode_dump(newlink(4, "eth0", stats32(1, 2))), {"eth0"})
    assert links == {}


def test_truncated_dump_is_refused() -> None:
    with pytest.raises(ValueError):
        decode_dump(newlink(2, "eth0", stats64(1, 2))[:-8])


def test_parse_decoded_messages() -> None:
    msgs = [
        LinkMessage(2, "eth0", 10, 20),
        LinkMessage(0, "eth1", 1, 1),  # no index: skipped
        LinkMessage(3, "eth2", None, None),  # no 64-bit stats
        LinkMessage(4, "eth3", 5, 6),  # not asked for
    ]
    assert parse_links(msgs, {"eth0", "eth1", "eth2"}) == {"eth0": LinkCounters(2, 10, 20)}


def test_decoded_message_fields() -> None:
    dump = newlink(9, "wg0", stats32(1, 2), stats64(BIG, 7)) + newlink(3, "eth0") + done()
    assert decode_dump(dump) == [LinkMessage(9, "wg0", BIG, 7), LinkMessage(3, "eth0", None, None)]


def test_first_name_and_stats_count_and_flags_are_masked() -> None:
    body = struct.pack("=BBHiII", 0, 0, 1, 5, 0, 0)
    body += nla(IFLA_IFNAME | 0x8000, b"eth0\0") + nla(IFLA_IFNAME, b"eth1\0")
    body += stats64(1, 2) + stats64(3, 4)
    msg = struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 2, 1, 0) + body
    assert decode_dump(msg) == [LinkMessage(5, "eth0", 1, 2)]


@pytest.mark.parametrize(
    "attrs",
    [
        struct.pack("=HH", 3, IFLA_IFNAME),  # shorter than its header
        struct.pack("=HH", 40, IFLA_STATS64) + bytes(8),  # past the message's end
    ],
)
def test_malformed_attribute_is_refused(attrs: bytes) -> None:
    body = struct.pack("=BBHiII", 0, 0, 1, 5, 0, 0) + attrs
    with pytest.raises(ValueError):
        decode_dump(struct.pack("=IHHII", 16 + len(body), RTM_NEWLINK, 2, 1, 0) + body)


def test_request_is_one_getlink_by_name() -> None:
    req = getlink_request("eth0", 77)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", req)
    assert (length, kind, flags, seq) == (len(req), 18, 1, 77)
    assert struct.unpack_from("=BxHiII", req, 16) == (0, 0, 0, 0, 0)
    assert req[32:] == nla(IFLA_IFNAME, b"eth0\0")


@pytest.mark.parametrize(
    ("content", "expected"),
    [("1000\n", 1_000_000_000), ("10000", 10_000_000_000), ("-1\n", None), ("", None), ("x", None)],
)
def test_link_speed(tmp_path: Path, content: str, expected: int | None) -> None:
    (tmp_path / "eth0").mkdir()
    (tmp_path / "eth0" / "speed").write_text(content)
    assert link_speed_bps("eth0", str(tmp_path)) == expected


def test_link_speed_of_missing_link(tmp_path: Path) -> None:
    assert link_speed_bps("nope", str(tmp_path)) is None
