"""Hypothesis strategies for feed documents close to the real format, and what a valid state is.

Most values drawn are valid, so that validation is passed deep into the
document; the rest are near misses (a key of 31 bytes, an allowed IP with host
bits set, a time without a zone) or of the wrong type. Keys and networks come
from small pools, so that duplicates, which the feed must refuse, are common.
"""

from __future__ import annotations

import base64
import ipaddress
import json
from datetime import UTC, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from nodeagent.core.model import KEY_LEN, DesiredState, format_key
from nodeagent.core.names import is_interface_name
from nodeagent.feed.snapshot import USERNAME, parse_snapshot
from tests.peerdata import key

# --- pools ----------------------------------------------------------------------

KEYS = [key("fuzz", i) for i in range(8)]
NETS = [
    "10.8.0.2/32",
    "10.8.0.3/32",
    "10.8.1.0/24",
    "10.0.0.0/8",
    "0.0.0.0/0",
    "fd00:8::2/128",
    "fd00:8::/64",
    "::/0",
]


def mostly(
    valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any], one_in: int = 5
) -> st.SearchStrategy[Any]:
    """``other`` once in ``one_in`` draws, ``valid`` otherwise.

    Near the top of a document, where one miss rejects it all, misses are rarer.
    The middle value picks ``other``: Hypothesis draws the ends of a range far
    more often than the rest.
    """
    return st.integers(0, one_in - 1).flatmap(lambda n: other if n == one_in // 2 else valid)


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.just([]),
    st.just({}),
)

# --- keys -----------------------------------------------------------------------


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _spoil_key(text: str, how: int, at: int) -> str:
    at %= len(text)
    return [
        text.rstrip("="),
        text.replace("+", "-").replace("/", "_"),
        text[:at] + "!" + text[at + 1 :],
        " " + text,
        text + "\n",
        text[:at] + "\u00e9" + text[at + 1 :],
        text.lower(),
        text[:at] + "=" + text[at + 1 :],
        text * 2,
    ][how % 9]


valid_key = st.one_of(st.sampled_from(KEYS), st.binary(min_size=KEY_LEN, max_size=KEY_LEN)).map(
    format_key
)
near_miss_key = st.one_of(
    st.binary(max_size=KEY_LEN + 3).filter(lambda b: len(b) != KEY_LEN).map(_b64),
    st.builds(_spoil_key, valid_key, st.integers(0, 8), st.integers(0, 43)),
    st.text(max_size=50),
    junk,
)
feed_key = mostly(valid_key, near_miss_key, one_in=12)

# --- allowed IPs ----------------------------------------------------------------


def _network(address: ipaddress.IPv4Address | ipaddress.IPv6Address, prefix: int) -> str:
    bits = address.max_prefixlen
    return str(ipaddress.ip_network(f"{address}/{min(prefix, bits)}", strict=False))


valid_net = st.one_of(
    st.sampled_from(NETS),
    st.builds(_network, st.ip_addresses(), st.integers(0, 128)),
)
near_miss_net = st.one_of(
    # Host bits set (mostly), or a prefix out of range.
    st.builds(lambda a, p: f"{a}/{p}", st.ip_addresses(), st.integers(-1, 200)),
    st.builds(
        lambda n, s: n.split("/")[0] + s,
        valid_net,
        st.sampled_from(
            ["/", "/ 8", "/08", "/+8", "/8.0", "/\u00b2", "/\u0663", "%eth0/128", "/32/32", "\0"]
        ),
    ),
    st.sampled_from(["1.2.3", "1.2.3.4.5", "::1::", "10.8.0.256/32", "", "/32", ":::/0"]),
    st.text(alphabet="0123456789abcdef.:/%", max_size=40),
    junk,
)
feed_net = mostly(valid_net, near_miss_net)

# --- times, users ---------------------------------------------------------------

_zones = st.integers(-23 * 60 - 59, 23 * 60 + 59).map(lambda m: timezone(timedelta(minutes=m)))
valid_time = st.one_of(
    st.datetimes(timezones=st.just(UTC)).map(
        lambda t: t.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    ),
    st.datetimes(timezones=_zones).map(lambda t: t.isoformat()),
)
near_miss_time = st.one_of(
    st.datetimes().map(lambda t: t.isoformat()),  # no zone
    st.dates().map(lambda d: d.isoformat()),
    st.sampled_from(["2027-13-01T00:00:00Z", "2027-01-01T25:00:00Z", "T", "2027-01-01 00:00Z"]),
    st.text(max_size=30),
    junk,
)
feed_time = mostly(valid_time, near_miss_time)

valid_username = st.one_of(
    st.sampled_from(["u1", "u2", "u48151623"]),
    st.from_regex(r"[A-Za-z0-9._@+-]{1,20}", fullmatch=True),
)
feed_username = mostly(valid_username, st.one_of(st.text(max_size=140), junk))

_b64text = st.binary(min_size=1, max_size=24).map(_b64)
valid_hash = st.builds(
    lambda n, r, p, salt, h: f"scrypt${n}${r}${p}${salt}${h}",
    st.sampled_from([1024, 16384, 3, 0, 2**40]),
    st.integers(0, 9999),
    st.integers(0, 9999),
    _b64text,
    _b64text,
)
feed_hash = mostly(
    valid_hash,
    st.one_of(st.sampled_from(["bcrypt$x", "scrypt$", "scrypt$1$1$1$$"]), st.text(), junk),
)

# --- documents ------------------------------------------------------------------

_unknown_field = st.dictionaries(st.sampled_from(["endpoint", "PUBLIC_KEY", "x"]), junk, max_size=1)


def _with_extra(obj: st.SearchStrategy[dict[str, Any]], one_in: int = 10) -> st.SearchStrategy[Any]:
    """An object, sometimes with an unknown field, sometimes not an object at all."""
    spoiled = st.one_of(
        st.builds(lambda o, extra: {**o, **extra}, obj, _unknown_field), st.lists(obj), junk
    )
    return mostly(obj, spoiled, one_in)


peer = _with_extra(
    st.fixed_dictionaries(
        {"public_key": feed_key},
        optional={
            "allowed_ips": mostly(st.lists(feed_net, max_size=4), junk, one_in=20),
            "preshared_key": st.one_of(st.none(), feed_key),
            "expires_at": st.one_of(st.none(), feed_time),
        },
    ),
    one_in=20,
)
user = _with_extra(
    st.fixed_dictionaries(
        {"username": feed_username, "password_hash": feed_hash},
        optional={"expires_at": st.one_of(st.none(), feed_time)},
    )
)
valid_ifname = st.one_of(
    st.sampled_from(["wg0", "wg1"]), st.from_regex(r"[a-z0-9_.=+-]{1,15}", fullmatch=True)
)
feed_ifname = mostly(
    valid_ifname, st.one_of(st.text(max_size=20), st.just("wg/0"), st.just("")), one_in=20
)
version = mostly(
    st.sampled_from(["v1", "v2", "v3"]), st.one_of(st.text(min_size=250), junk), one_in=20
)


def interfaces(
    items: st.SearchStrategy[Any], names: st.SearchStrategy[Any] = feed_ifname
) -> st.SearchStrategy[Any]:
    return mostly(st.dictionaries(names, items, min_size=1, max_size=3), junk, one_in=20)


snapshot_doc = _with_extra(
    st.fixed_dictionaries(
        {
            "version": version,
            "full": mostly(st.just(True), junk, one_in=20),
            "wireguard": interfaces(
                _with_extra(st.fixed_dictionaries({"peers": st.lists(peer, max_size=8)}), 20)
            ),
        },
        optional={
            "openvpn": _with_extra(st.fixed_dictionaries({"users": st.lists(user, max_size=4)})),
        },
    ),
    one_in=20,
)


def _mutate(data: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Each edit replaces ``n`` bytes at a position with other bytes (an insert when n is 0)."""
    out = bytearray(data)
    for pos, n, new in edits:
        pos %= len(out) + 1
        out[pos : pos + n] = new
    return bytes(out)


_edits = st.lists(
    st.tuples(
        st.integers(0, 1 << 16),
        st.integers(0, 4),
        st.one_of(st.binary(max_size=4), st.sampled_from([b'"', b"[", b"{", b"\\u", b"\xff"])),
    ),
    max_size=3,
)


def encoded(docs: st.SearchStrategy[Any]) -> st.SearchStrategy[bytes]:
    """Documents as JSON bytes: ASCII or UTF-8, whitespace or not, sometimes with edits."""
    text = st.builds(
        lambda doc, ascii_only, indent: json.dumps(doc, ensure_ascii=ascii_only, indent=indent),
        docs,
        st.booleans(),
        st.sampled_from([None, 1]),
    )
    data = text.map(lambda t: t.encode("utf-8", "surrogatepass"))
    return st.integers(0, 4).flatmap(lambda n: st.builds(_mutate, data, _edits) if n == 0 else data)


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text()),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=30,
)

# Deep nesting: a stack-based decoder must not recurse once a level.
DEEP = [
    b"[" * 200_000,
    b"[" * 200_000 + b"]" * 200_000,
    b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    b'{"version":"v1","full":true,"wireguard":' + b"[" * 200_000,
    b'{"version":"v1","full":false,"since":"v0","wireguard":{"wg0":{"upsert":' + b"[" * 200_000,
]

# --- what a valid state is --------------------------------------------------------


def state_document(state: DesiredState) -> str:
    """A snapshot holding exactly ``state``: a valid state survives this round trip unchanged."""
    wireguard = {
        name: {
            "peers": [
                {
                    "public_key": format_key(k),
                    "allowed_ips": sorted(str(ip) for ip in p.allowed_ips),
                    "preshared_key": format_key(p.preshared_key) if p.preshared_key else None,
                    "expires_at": iface.expires[k].isoformat() if k in iface.expires else None,
                }
                for k, p in iface.peers.items()
            ]
        }
        for name, iface in state.wireguard.items()
    }
    users = [
        {
            "username": u.username,
            "password_hash": u.password_hash,
            "expires_at": u.expires_at.isoformat() if u.expires_at else None,
        }
        for u in state.users.values()
    ]
    return json.dumps(
        {
            "version": state.version,
            "full": True,
            "wireguard": wireguard,
            "openvpn": {"users": users},
        }
    )


def check_state(state: DesiredState) -> None:
    """Every rule of "The feed" holds for ``state``, and it survives re-encoding unchanged."""
    assert isinstance(state, DesiredState)
    assert isinstance(state.version, str) and 0 < len(state.version) <= 256
    for name, iface in state.wireguard.items():
        assert is_interface_name(name)
        owner: dict[object, bytes] = {}
        assert iface.expires.keys() <= iface.peers.keys()
        for k, p in iface.peers.items():
            assert p.public_key == k and len(k) == KEY_LEN
            assert p.preshared_key is None or len(p.preshared_key) == KEY_LEN
            for ip in p.allowed_ips:
                bits = len(ip.address) * 8
                assert bits in (32, 128) and 0 <= ip.cidr <= bits
                assert int.from_bytes(ip.address, "big") & ((1 << (bits - ip.cidr)) - 1) == 0
                assert owner.setdefault(ip, k) == k, "an allowed IP on two peers"
    for name, u in state.users.items():
        assert u.username == name and USERNAME.match(name)
    again = parse_snapshot(state_document(state))
    assert again.version == state.version
    assert again.users == state.users
    assert again.wireguard.keys() == state.wireguard.keys()
    for name, iface in state.wireguard.items():
        assert dict(again.wireguard[name].peers) == dict(iface.peers)
        assert dict(again.wireguard[name].expires) == dict(iface.expires)


def state_from(doc: dict[str, Any]) -> DesiredState:
    return parse_snapshot(json.dumps(doc))
