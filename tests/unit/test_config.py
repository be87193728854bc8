"""Configuration loading: every problem named by file, line and dotted key; units; secrets."""

from __future__ import annotations

import base64
import os
import re
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nodeagent.config.agent import (
    Config,
    ConfigError,
    Problem,
    TLSConfig,
    load_config,
    parse_duration,
    parse_rate,
    read_private_key,
    read_secret,
)
from nodeagent.config.units import MAX_DURATION, format_duration, format_rate, parse_size

REPO = Path(__file__).resolve().parents[2]
KEY_TEXT = base64.b64encode(bytes(range(32))).decode()

# $T is replaced by the test's tmp_path; "# <-" marks the line a problem must name.
FULL = """\
node:
  name: nl-ams-01
wireguard:
  resync_interval: 30s
  interfaces:
    - name: wg0
    - name: wgu1
      backend: userspace
      create: true
      private_key_file: $T/wg.key
      listen_port: 51821
      addresses: [10.9.0.1/16, "fd00:9::1/64"]
feed:
  url: https://central.example.net/feed
  token_file: token
  ca_file: $T/ca.pem
  long_poll: 25s
  max_removal_ratio: 0.25
  max_bytes: 1MiB
openvpn:
  instances:
    - {management: /run/openvpn/main.sock, interface: tun0}
    - {management: "127.0.0.1:7505", interface: tun1}
load:
  interfaces: [eth0, eth1]
  capacity: 2.5Gbit
  sample_interval: 500ms
  window: 1m
  resolution_percent: 5
http:
  listen: ["0.0.0.0:9586", "[::1]:9586", "localhost:8080"]
  token_file: $T/token
  tls: {cert_file: $T/cert.pem, key_file: $T/tls.key}
push:
  url: http://status.example.net/push
  secret_file: $T/push.secret
  interval: 10s
privacy:
  scrub_idle_after: 5m
  scrub_interval: 15s
log: {level: debug, format: json}
"""

MINIMAL = """\
node:
  name: nl-ams-01
feed:
  path: $T/feed.json
"""


@pytest.fixture
def tmp(tmp_path: Path) -> Path:
    """A directory with every file the configs above refer to, secrets mode 0600."""
    for name in ("wg.key", "token", "tls.key", "push.secret"):
        secret = tmp_path / name
        secret.write_text(KEY_TEXT + "\n")
        secret.chmod(0o600)
    (tmp_path / "open.token").write_text("t0ken\n")
    (tmp_path / "open.token").chmod(0o644)
    (tmp_path / "bad.key").write_text("not-a-key\n")
    (tmp_path / "bad.key").chmod(0o600)
    for name in ("ca.pem", "cert.pem", "feed.json"):
        (tmp_path / name).write_text("x\n")
    return tmp_path


def write(tmp: Path, text: str) -> Path:
    path = tmp / "config.yaml"
    path.write_text(textwrap.dedent(text).replace("$T", str(tmp)))
    return path


def problems(tmp: Path, text: str) -> list[Problem]:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp, text))
    return info.value.problems


def marked_line(text: str) -> int:
    (line,) = [i for i, s in enumerate(textwrap.dedent(text).splitlines(), 1) if "# <-" in s]
    return line


def test_full_config(tmp: Path) -> None:
    config = load_config(write(tmp, FULL))
    assert isinstance(config, Config)
    assert config.node_name == "nl-ams-01"
    wg0, wgu1 = config.wireguard.interfaces
    assert config.wireguard.resync_interval == 30.0
    assert (wg0.name, wg0.backend, wg0.create, wg0.private_key_file) == (
        "wg0",
        "kernel",
        False,
        None,
    )
    assert wgu1.backend == "userspace" and wgu1.create
    assert wgu1.uapi_socket == "/var/run/wireguard/wgu1.sock"
    assert wgu1.private_key_file == str(tmp / "wg.key")
    assert wgu1.listen_port == 51821
    assert wgu1.addresses == ("10.9.0.1/16", "fd00:9::1/64")
    feed = config.feed
    assert feed.url == "https://central.example.net/feed" and feed.path is None
    # A relative path is taken relative to the configuration file.
    assert feed.token_file == str(tmp / "token")
    assert (feed.long_poll, feed.max_removal_ratio, feed.max_bytes) == (25.0, 0.25, 1 << 20)
    assert [(o.management, o.interface) for o in config.openvpn] == [
        ("/run/openvpn/main.sock", "tun0"),
        ("127.0.0.1:7505", "tun1"),
    ]
    assert config.load is not None
    assert config.load.interfaces == ("eth0", "eth1")
    assert config.load.capacity_bps == 2_500_000_000
    assert (config.load.sample_interval, config.load.window) == (0.5, 60.0)
    assert config.load.resolution_percent == 5.0
    assert config.http is not None
    assert config.http.listen == ("0.0.0.0:9586", "[::1]:9586", "localhost:8080")
    assert config.http.tls == TLSConfig(str(tmp / "cert.pem"), str(tmp / "tls.key"))
    assert config.push is not None and config.push.interval == 10.0
    assert (config.privacy.scrub_idle_after, config.privacy.scrub_interval) == (300.0, 15.0)
    assert (config.log.level, config.log.format) == ("debug", "json")


def test_defaults(tmp: Path) -> None:
    config = load_config(write(tmp, MINIMAL))
    assert config.wireguard.interfaces == () and config.wireguard.resync_interval == 60.0
    assert config.feed.path == str(tmp / "feed.json")
    assert (config.feed.long_poll, config.feed.max_removal_ratio) == (30.0, 0.5)
    assert config.feed.max_bytes == 512 << 20
    assert config.openvpn == () and config.load is None
    assert config.http is None and config.push is None
    assert (config.privacy.scrub_idle_after, config.privacy.scrub_interval) == (180.0, 30.0)
    assert (config.log.level, config.log.format) == ("info", "text")


def test_section_defaults(tmp: Path) -> None:
    config = load_config(
        write(
            tmp,
            MINIMAL
            + "wireguard:\n  interfaces: [{name: wg0, backend: userspace}]\n"
            + "load: {interfaces: [eth0]}\nhttp:\nprivacy:\n",
        )
    )
    assert config.wireguard.interfaces[0].uapi_socket == "/var/run/wireguard/wg0.sock"
    assert config.load is not None and config.load.capacity_bps is None  # auto
    assert (config.load.sample_interval, config.load.window) == (5.0, 60.0)
    assert config.load.resolution_percent == 1.0
    # An empty section is the same as an absent one.
    assert config.http is None
    assert config.privacy.scrub_idle_after == 180.0


def test_missing_feed_file_is_fail_static_not_an_error(tmp: Path) -> None:
    (tmp / "feed.json").unlink()
    assert load_config(write(tmp, MINIMAL)).feed.path == str(tmp / "feed.json")


# Each case: a whole file with the offending line marked "# <-", the key path,
# and a fragment of the message. Exactly one problem must be reported.
CASES = [
    (
        "unknown key at top level",
        MINIMAL + "nodes: {}  # <-\n",
        "nodes",
        "unknown key; did you mean node?",
    ),
    (
        "unknown key nested",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: wg0\n      listen_prot: 1  # <-\n",
        "wireguard.interfaces[0].listen_prot",
        "unknown key",
    ),
    (
        "duplicate key",
        MINIMAL + "log: {level: info}\nlog: {level: debug}  # <-\n",
        "log",
        "duplicate key (first given on line 5)",
    ),
    (
        "wrong type: mapping for a string",
        "node:\n  name: {a: 1}  # <-\nfeed: {path: $T/feed.json}\n",
        "node.name",
        "must be a string, not a mapping",
    ),
    (
        "wrong type: yes for a string",
        "node:\n  name: no  # <-\nfeed: {path: $T/feed.json}\n",
        "node.name",
        'YAML reads no as a boolean, so quote it: "no"',
    ),
    (
        "wrong type: section not a mapping",
        MINIMAL + "log: debug  # <-\n",
        "log",
        "must be a mapping, not text",
    ),
    (
        "wrong type: list",
        MINIMAL + "load:\n  interfaces: eth0  # <-\n",
        "load.interfaces",
        "must be a list",
    ),
    (
        "bad duration",
        MINIMAL + "privacy:\n  scrub_interval: 30 seconds  # <-\n",
        "privacy.scrub_interval",
        "is not a duration",
    ),
    (
        "bare number duration",
        MINIMAL + "wireguard:\n  resync_interval: 60  # <-\n",
        "wireguard.resync_interval",
        'has no unit; write it as text with a unit, e.g. "30s"',
    ),
    (
        "zero duration",
        MINIMAL + "wireguard:\n  resync_interval: 0s  # <-\n",
        "wireguard.resync_interval",
        "must be positive",
    ),
    (
        "bad rate",
        MINIMAL + "load:\n  interfaces: [eth0]\n  capacity: 1Gbps  # <-\n",
        "load.capacity",
        "is not a rate",
    ),
    (
        "bare number rate",
        MINIMAL + "load:\n  interfaces: [eth0]\n  capacity: 1000000000  # <-\n",
        "load.capacity",
        "has no unit",
    ),
    (
        "bad size",
        "node: {name: n}\nfeed:\n  path: $T/feed.json\n  max_bytes: 1PB  # <-\n",
        "feed.max_bytes",
        "is not a size",
    ),
    (
        "missing secret file",
        MINIMAL + "http:\n  token_file: $T/nope  # <-\n",
        "http.token_file",
        "/nope: No such file or directory",
    ),
    (
        "secret file too open",
        MINIMAL + "http:\n  token_file: $T/open.token  # <-\n",
        "http.token_file",
        "open.token is accessible by group or others (mode 0644); run chmod 600",
    ),
    (
        "secret file is a directory",
        MINIMAL + "push:\n  url: https://s.example/p\n  secret_file: $T  # <-\n",
        "push.secret_file",
        "Is a directory",
    ),
    (
        "private key file without a key",
        MINIMAL
        + "wireguard:\n  interfaces:\n    - name: wg0\n      create: true\n"
        + "      listen_port: 51820\n      private_key_file: $T/bad.key  # <-\n",
        "wireguard.interfaces[0].private_key_file",
        "bad.key does not hold a WireGuard private key",
    ),
    (
        "missing ordinary file",
        MINIMAL + "http:\n  tls:\n    cert_file: $T/nope.pem  # <-\n    key_file: $T/tls.key\n",
        "http.tls.cert_file",
        "No such file or directory",
    ),
    (
        "interface name too long",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: wg-0123456789abc  # <-\n",
        "wireguard.interfaces[0].name",
        "longer than 15 characters",
    ),
    (
        "interface name with a colon",
        MINIMAL + "load:\n  interfaces: [eth0, 'eth0:1']  # <-\n",
        "load.interfaces[1]",
        "is not an interface name",
    ),
    (
        # The rules of core.names, the feed's too: characters the kernel would take are refused.
        "interface name with a character outside the core rules",
        MINIMAL
        + "openvpn:\n  instances:\n    - management: /run/ovpn.sock\n"
        + "      interface: tun@0  # <-\n",
        "openvpn.instances[0].interface",
        "'tun@0' is not an interface name: letters, digits and '_.=+-' only",
    ),
    (
        "interface name of dots",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: '..'  # <-\n",
        "wireguard.interfaces[0].name",
        "is not an interface name",
    ),
    (
        "duplicate interface name",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: wg0\n    - name: wg0  # <-\n",
        "wireguard.interfaces[1].name",
        "wg0 is already used by wireguard.interfaces[0]",
    ),
    (
        "bad backend",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: wg0\n      backend: kernal  # <-\n",
        "wireguard.interfaces[0].backend",
        "must be one of kernel, userspace",
    ),
    (
        "create without key",
        MINIMAL
        + "wireguard:\n  interfaces:\n    - name: wg0\n      create: true  # <-\n"
        + "      listen_port: 51820\n",
        "wireguard.interfaces[0].private_key_file",
        "is required with create: true",
    ),
    (
        "address without prefix",
        MINIMAL
        + "wireguard:\n  interfaces:\n    - name: wg0\n      create: true\n"
        + "      private_key_file: $T/wg.key\n      listen_port: 51820\n"
        + "      addresses:\n        - 10.8.0.1  # <-\n",
        "wireguard.interfaces[0].addresses[0]",
        "not an address with a prefix length",
    ),
    (
        "both url and path",
        "node: {name: n}\nfeed:\n  url: https://c.example/f\n  path: $T/feed.json  # <-\n",
        "feed.path",
        "either url or path, not both",
    ),
    (
        "neither url nor path",
        "node: {name: n}\nfeed:\n  long_poll: 5s  # <-\n",
        "feed",
        "needs exactly one of url or path",
    ),
    (
        "feed url not http",
        "node: {name: n}\nfeed:\n  url: ftp://c.example/f  # <-\n",
        "feed.url",
        "must be an http:// or https:// URL",
    ),
    (
        "token_file with a file feed",
        MINIMAL + "  token_file: $T/token  # <-\n",
        "feed.token_file",
        "is only used with url",
    ),
    (
        "missing node",
        "feed:  # <-\n  path: $T/feed.json\n",
        "node",
        "is required",
    ),
    (
        "missing node name",
        "node: {}  # <-\nfeed: {path: $T/feed.json}\n",
        "node.name",
        "is required",
    ),
    (
        "scrub_idle_after below 180s",
        MINIMAL + "privacy:\n  scrub_idle_after: 179s  # <-\n",
        "privacy.scrub_idle_after",
        "must be at least 180s",
    ),
    (
        "port out of range",
        MINIMAL
        + "wireguard:\n  interfaces:\n    - name: wg0\n      create: true\n"
        + "      private_key_file: $T/wg.key\n      listen_port: 70000  # <-\n",
        "wireguard.interfaces[0].listen_port",
        "70000 is not a port; must be 1..65535",
    ),
    (
        "listen without port",
        MINIMAL + "http:\n  listen:\n    - 127.0.0.1:9586\n    - '[::1]'  # <-\n",
        "http.listen[1]",
        "needs a port",
    ),
    (
        "bool for int",
        MINIMAL
        + "wireguard:\n  interfaces:\n    - name: wg0\n      create: true\n"
        + "      private_key_file: $T/wg.key\n      listen_port: yes  # <-\n",
        "wireguard.interfaces[0].listen_port",
        "must be a whole number, not a boolean",
    ),
    (
        "int for bool",
        MINIMAL + "wireguard:\n  interfaces:\n    - name: wg0\n      create: 1  # <-\n",
        "wireguard.interfaces[0].create",
        "must be true or false, not a number",
    ),
    (
        "bool for a ratio",
        "node: {name: n}\nfeed:\n  path: $T/feed.json\n  max_removal_ratio: true  # <-\n",
        "feed.max_removal_ratio",
        "must be a number, not a boolean",
    ),
    (
        "ratio out of range",
        "node: {name: n}\nfeed:\n  path: $T/feed.json\n  max_removal_ratio: 1.5  # <-\n",
        "feed.max_removal_ratio",
        "is not in (0, 1]",
    ),
    (
        "resolution out of range",
        MINIMAL + "load:\n  interfaces: [eth0]\n  resolution_percent: 0  # <-\n",
        "load.resolution_percent",
        "must be more than 0 and at most 100",
    ),
    (
        "bad log level",
        MINIMAL + "log:\n  level: verbose  # <-\n",
        "log.level",
        "must be one of debug, info, warning, error",
    ),
    (
        "empty load interfaces",
        MINIMAL + "load:\n  interfaces: []  # <-\n",
        "load.interfaces",
        "must not be empty",
    ),
    (
        "window shorter than a sample",
        MINIMAL + "load:\n  interfaces: [eth0]\n  sample_interval: 10s\n  window: 5s  # <-\n",
        "load.window",
        "must be at least sample_interval",
    ),
    (
        "unknown YAML tag",
        MINIMAL + "log:\n  level: !env LEVEL  # <-\n",
        "log.level",
        "cannot be read",
    ),
]


@pytest.mark.parametrize(
    ("text", "key", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_problem(tmp: Path, text: str, key: str, message: str) -> None:
    found = problems(tmp, text)
    path = tmp / "config.yaml"
    assert len(found) == 1, "\n".join(map(str, found))
    (problem,) = found
    assert str(problem).startswith(f"{path}:{marked_line(text)}: {key}: "), str(problem)
    assert message in problem.message


def test_all_problems_reported_together_in_line_order(tmp: Path) -> None:
    text = """\
    node:
      name: nl-ams-01
      color: blue
    feed:
      path: $T/feed.json
      long_poll: 30
    privacy:
      scrub_idle_after: 1m
    log: {level: loud}
    """
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp, text))
    err = info.value
    prefixes = [f"{p.line}: {p.key}" for p in err.problems]
    assert prefixes == [
        "3: node.color",
        "6: feed.long_poll",
        "8: privacy.scrub_idle_after",
        "9: log.level",
    ]
    assert str(err) == "\n".join(str(p) for p in err.problems)
    assert str(err).count(f"{tmp / 'config.yaml'}:") == 4


def test_problem_str() -> None:
    assert str(Problem("/etc/c.yaml", 12, "a.b", "is wrong")) == "/etc/c.yaml:12: a.b: is wrong"
    assert str(Problem("/etc/c.yaml", None, "", "cannot read")) == "/etc/c.yaml: cannot read"


def test_unreadable_and_invalid_files(tmp: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read: No such file"):
        load_config(tmp / "nope.yaml")
    with pytest.raises(ConfigError, match=r"config\.yaml:3: not valid YAML"):
        load_config(write(tmp, "node:\n  name: x\n  - y\n"))
    with pytest.raises(ConfigError, match=r"config\.yaml:1: the top level must be a mapping"):
        load_config(write(tmp, "- node\n"))
    found = problems(tmp, "")
    assert [(p.line, p.key, p.message) for p in found] == [
        (1, "node", "is required"),
        (1, "feed", "is required"),
    ]


def test_secret_content_never_in_messages(tmp: Path) -> None:
    # Almost a key: one character short.
    leaked = KEY_TEXT[:-2] + "="
    key = tmp / "almost.key"
    key.write_text(leaked + "\n")
    key.chmod(0o600)
    with pytest.raises(ValueError) as info:
        read_private_key(key)
    assert leaked not in str(info.value) and leaked[:8] not in str(info.value)
    text = MINIMAL + (
        "wireguard:\n  interfaces:\n    - name: wg0\n      create: true\n"
        f"      private_key_file: {key}\n      listen_port: 51820\n"
    )
    assert leaked[:8] not in "\n".join(map(str, problems(tmp, text)))


def test_read_secret(tmp: Path) -> None:
    assert read_secret(tmp / "token") == KEY_TEXT.encode()
    assert read_private_key(tmp / "wg.key") == bytes(range(32))
    with pytest.raises(ValueError, match=r"mode 0644\); run chmod 600"):
        read_secret(tmp / "open.token")
    empty = tmp / "empty"
    empty.write_text(" \n")
    empty.chmod(0o600)
    with pytest.raises(ValueError, match="is empty"):
        read_secret(empty)
    fifo = tmp / "fifo"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(ValueError, match="not a regular file"):
        read_secret(fifo)  # and does not hang
    with pytest.raises(OSError):
        read_secret(tmp / "nope")


def test_example_config_only_lacks_its_etc_files(tmp: Path) -> None:
    """The shipped example is valid apart from the /etc/nodeagent files it names."""
    example = REPO / "config.example.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(example)
    assert info.value.problems
    for problem in info.value.problems:
        assert re.fullmatch(r"/etc/nodeagent/\S+: No such file or directory", problem.message), str(
            problem
        )


def test_example_config_parses_with_its_files(tmp_path: Path) -> None:
    text = (REPO / "config.example.yaml").read_text()
    for name in set(re.findall(r"/etc/nodeagent/([\w.-]+)", text)):
        f = tmp_path / name
        f.write_text(KEY_TEXT + "\n")
        f.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(text.replace("/etc/nodeagent/", f"{tmp_path}/"))
    config = load_config(path)
    assert config.node_name == "nl-ams-01"
    assert [i.name for i in config.wireguard.interfaces] == ["wg0", "wg1"]
    assert config.load is not None and config.load.capacity_bps == 10**9


# --- units ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("500ms", 0.5),
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1.5s", 1.5),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("30", 'no unit; write "30s"'),
        ("-5s", "negative"),
        ("0s", "zero"),
        ("5 s", "not a duration"),
        ("1s1h", "largest first"),
        ("2d", "not a duration"),
        ("9999h", "longer than a year"),
    ],
)
def test_parse_duration_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_duration(text)


@given(st.floats(min_value=1e-6, max_value=MAX_DURATION, allow_nan=False, allow_infinity=False))
def test_duration_round_trip(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@given(st.integers(0, 100), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_duration_sum(h: int, m: int, s: int, ms: int) -> None:
    parts = [(h, "h"), (m, "m"), (s, "s"), (ms, "ms")]
    text = "".join(f"{n}{unit}" for n, unit in parts if n)
    total_ms = ((h * 60 + m) * 60 + s) * 1000 + ms
    if total_ms == 0:
        return
    assert parse_duration(text) == total_ms / 1000
    assert parse_duration(format_duration(total_ms / 1000)) == total_ms / 1000


@pytest.mark.parametrize(
    ("text", "bps"),
    [
        ("100kbit", 100_000),
        ("50Mbit", 50_000_000),
        ("1Gbit", 10**9),
        ("2.5Gbit", 2_500_000_000),
        ("10gbit", 10 * 10**9),
        ("1500bit", 1500),
    ],
)
def test_parse_rate(text: str, bps: int) -> None:
    assert parse_rate(text) == bps
    assert parse_rate(format_rate(bps)) == bps


@pytest.mark.parametrize("text", ["1Gbps", "100MB", "1Gibit", "1000", "0Mbit", "0.5bit", "fast"])
def test_parse_rate_errors(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rate(text)


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1024", 1024),
        ("256MiB", 256 << 20),
        ("1GB", 10**9),
        ("512KiB", 512 << 10),
        ("1.5KiB", 1536),
    ],
)
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size
