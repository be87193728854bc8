"""The configuration file: YAML in, frozen dataclasses out.

``load_config`` reads the whole file, checks every key and every referenced
file, and either returns a ``Config`` or raises one ``ConfigError`` listing
*all* problems, each as ``FILE:LINE: key.path: what is wrong``. An operator
fixing a config on a node should see everything wrong in one run, not one
problem per restart.

The YAML is composed into nodes rather than loaded into dicts, because only
nodes keep line numbers. A small walker (``_Map``, ``_At`` and converter
functions ``(_At) -> value``) turns nodes into values; each section builder
below reads like the schema it checks. Explicitly empty values (``key:`` with
nothing after it) count as absent, so that commenting out a section's body
behaves like commenting out the section.

Relative file paths are taken relative to the configuration file's directory,
and stored absolute.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import re
import stat
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar, cast
from urllib.parse import urlsplit

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from .model import parse_key
from .units import parse_duration, parse_rate, parse_size

__all__ = [
    "Config",
    "ConfigError",
    "FeedConfig",
    "HTTPConfig",
    "LoadConfig",
    "LogConfig",
    "OpenVPNInstanceConfig",
    "PrivacyConfig",
    "Problem",
    "PushConfig",
    "TLSConfig",
    "WireguardConfig",
    "WireguardInterfaceConfig",
    "load_config",
    "parse_duration",
    "parse_rate",
    "read_private_key",
    "read_secret",
]

# WireGuard: a session in use re-handshakes every 120 s (REKEY_AFTER_TIME) and
# its keys die at 180 s (REJECT_AFTER_TIME). A peer silent for 180 s has no
# live session; scrubbing earlier would cut sessions that are in use.
MIN_SCRUB_IDLE_AFTER = 180.0
DEFAULT_HTTP_LISTEN = "127.0.0.1:9586"
MAX_CONFIG_BYTES = 1 << 20
MAX_SECRET_BYTES = 64 << 10


# --- the result ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WireguardInterfaceConfig:
    """One WireGuard interface the agent keeps in step with the feed."""

    name: str
    backend: Literal["kernel", "userspace"]
    uapi_socket: str
    create: bool
    private_key_file: str | None
    listen_port: int | None
    addresses: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WireguardConfig:
    interfaces: tuple[WireguardInterfaceConfig, ...]
    resync_interval: float


@dataclass(frozen=True, slots=True)
class FeedConfig:
    """Where desired state comes from: exactly one of ``url`` and ``path`` is set."""

    url: str | None
    path: str | None
    token_file: str | None
    ca_file: str | None
    long_poll: float
    max_removal_ratio: float
    max_bytes: int


@dataclass(frozen=True, slots=True)
class OpenVPNInstanceConfig:
    management: str
    interface: str


@dataclass(frozen=True, slots=True)
class LoadConfig:
    interfaces: tuple[str, ...]
    capacity_bps: int | None  # None: the link's reported speed ("auto")
    sample_interval: float
    window: float
    resolution_percent: float


@dataclass(frozen=True, slots=True)
class TLSConfig:
    cert_file: str
    key_file: str


@dataclass(frozen=True, slots=True)
class HTTPConfig:
    listen: tuple[str, ...]
    token_file: str | None
    tls: TLSConfig | None


@dataclass(frozen=True, slots=True)
class PushConfig:
    url: str
    secret_file: str
    interval: float


@dataclass(frozen=True, slots=True)
class PrivacyConfig:
    scrub_idle_after: float
    scrub_interval: float


@dataclass(frozen=True, slots=True)
class LogConfig:
    level: str
    format: str


@dataclass(frozen=True, slots=True)
class Config:
    """The whole validated configuration. Durations are seconds, rates bits per second."""

    path: str
    node_name: str
    wireguard: WireguardConfig
    feed: FeedConfig
    openvpn: tuple[OpenVPNInstanceConfig, ...]
    load: LoadConfig | None
    http: HTTPConfig | None
    push: PushConfig | None
    privacy: PrivacyConfig
    log: LogConfig


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a configuration file. ``line`` is None for the file as a whole."""

    file: str
    line: int | None
    key: str
    message: str

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class ConfigError(Exception):
    """A configuration file is unusable; ``problems`` lists everything wrong with it."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


# --- secrets ---------------------------------------------------------------


def read_secret(path: str | os.PathLike[str]) -> bytes:
    """The content of a secret file, trailing whitespace stripped.

    Refuses, like ``wg``, a file that group or others may access. Raises
    ``OSError`` if it cannot be opened and ``ValueError`` otherwise; no message
    ever contains the file's content.
    """
    # O_NONBLOCK: a FIFO put where a secret should be must not hang the agent.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        # fstat on the open file, not stat on the name: no window to swap the file.
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{os.fspath(path)} is not a regular file")
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077:
            raise ValueError(
                f"{os.fspath(path)} is accessible by group or others (mode {mode:04o}); "
                f"run chmod 600 {os.fspath(path)}"
            )
        data = f.read(MAX_SECRET_BYTES + 1)
    if len(data) > MAX_SECRET_BYTES:
        raise ValueError(f"{os.fspath(path)} is larger than {MAX_SECRET_BYTES} bytes")
    secret = data.rstrip()
    if not secret:
        raise ValueError(f"{os.fspath(path)} is empty")
    return secret


def read_private_key(path: str | os.PathLike[str]) -> bytes:
    """The 32 raw bytes of a WireGuard private key file (base64, as ``wg genkey`` writes it)."""
    text = read_secret(path)
    try:
        return parse_key(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        # "from None": the decoding error would quote the bytes it choked on.
        raise ValueError(
            f"{os.fspath(path)} does not hold a WireGuard private key "
            "(base64 of 32 bytes, as wg genkey writes it)"
        ) from None


# --- the walker ------------------------------------------------------------

T = TypeVar("T")
_NULL_TAG = "tag:yaml.org,2002:null"


class _Invalid(Exception):
    """Raised by a converter; reported at the node being converted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Walk:
    """What every part of one walk shares: the file, its directory, the problems so far."""

    def __init__(self, file: str, base: Path, loader: yaml.SafeLoader) -> None:
        self.file = file
        self.base = base
        self.loader = loader
        self.problems: list[Problem] = []

    def report(self, line: int, key: str, message: str) -> None:
        self.problems.append(Problem(self.file, line, key, message))


@dataclass(frozen=True, slots=True)
class _At:
    """A YAML node and the dotted key path that leads to it."""

    walk: _Walk
    node: Node
    path: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def report(self, message: str) -> None:
        self.walk.report(self.line, self.path, message)

    def scalar(self) -> object:
        """The Python value of a scalar node; the node itself for a list or a mapping."""
        if not isinstance(self.node, ScalarNode):
            return self.node
        try:
            return self.walk.loader.construct_object(self.node, deep=True)
        except yaml.YAMLError as e:
            # Unknown tags (!env …) and impossible dates land here.
            raise _Invalid(f"cannot be read: {getattr(e, 'problem', None) or e}") from None

    def field(self, key: str) -> _At:
        """The value at ``key`` if this is a mapping that has it, else this node under that path."""
        if isinstance(self.node, MappingNode):
            for k, v in self.node.value:
                if isinstance(k, ScalarNode) and k.value == key:
                    return _At(self.walk, v, f"{self.path}.{key}")
        return _At(self.walk, self.node, f"{self.path}.{key}")


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class _Map:
    """One YAML mapping being read: hands out values by key, then reports keys nobody asked for."""

    def __init__(self, walk: _Walk, path: str, line: int, pairs: dict[str, tuple[Node, Node]]):
        self.walk = walk
        self.path = path
        self.line = line
        self._pairs = pairs
        self._known: list[str] = []

    @classmethod
    def of(cls, at: _At) -> _Map:
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in at.node.value:
            key_at = _At(at.walk, key_node, at.path)
            if not isinstance(key_node, ScalarNode):
                key_at.report("keys must be plain names")
                continue
            name = str(key_node.value)
            if name == "<<":
                key_at.report("YAML merge keys (<<) are not supported; write the keys out")
                continue
            child = _At(at.walk, key_node, _join(at.path, name))
            if name in pairs:
                first = int(pairs[name][0].start_mark.line) + 1
                child.report(f"duplicate key (first given on line {first})")
                continue
            pairs[name] = (key_node, value_node)
        return cls(at.walk, at.path, at.line, pairs)

    def take(self, key: str) -> _At | None:
        """The value at ``key``, or None if absent or empty. Marks ``key`` as known."""
        self._known.append(key)
        pair = self._pairs.get(key)
        if pair is None or _is_null(pair[1]):
            return None
        return _At(self.walk, pair[1], _join(self.path, key))

    def has(self, key: str) -> bool:
        pair = self._pairs.get(key)
        return pair is not None and not _is_null(pair[1])

    def get(self, key: str, convert: Callable[[_At], T], default: T) -> T:
        """The converted value at ``key``; ``default`` if absent (or invalid, after reporting)."""
        at = self.take(key)
        if at is None:
            return default
        try:
            return convert(at)
        except _Invalid as e:
            at.report(e.message)
            return default

    def require(
        self, key: str, convert: Callable[[_At], T], placeholder: T, *, by: str | None = None
    ) -> T:
        """Like ``get``, but absence is a problem; ``placeholder`` stands in until the raise.

        ``by`` names the key that makes this one required: the problem is reported on its line.
        """
        if not self.has(key):
            self.take(key)
            if by is None:
                self.problem(key, "is required")
            else:
                self.problem(key, f"is required with {by}: true", line_of=by)
            return placeholder
        return self.get(key, convert, placeholder)

    def items(
        self, key: str, convert: Callable[[_At], T], *, required: bool = False
    ) -> list[tuple[_At, T]]:
        """Each converted item of the list at ``key`` with where it came from."""
        at = self.take(key)
        if at is None:
            if required:
                self.problem(key, "is required")
            return []
        if not isinstance(at.node, SequenceNode):
            at.report(_wrong_type(at, "a list").message)
            return []
        if required and not at.node.value:
            at.report("must not be empty")
        return _items(at, convert)

    def section(self, key: str, build: Callable[[_Map], T]) -> T:
        """A sub-mapping read by ``build``; when absent, read from no keys, so defaults apply."""
        at = self.take(key)
        if at is not None:
            try:
                return _section(build)(at)
            except _Invalid as e:
                at.report(e.message)
        empty = _Map(self.walk, _join(self.path, key), at.line if at else self.line, {})
        return build(empty)

    def forbid(self, key: str, why: str) -> None:
        """Report ``key`` if given: it means nothing in this combination."""
        if self.take(key) is not None:
            self.problem(key, f"is only used {why}")

    def problem(self, key: str | None, message: str, *, line_of: str | None = None) -> None:
        """Report at the line of ``line_of`` (or else ``key``) if given, else at this mapping's."""
        pair = self._pairs.get(line_of or key or "")
        line = int(pair[0].start_mark.line) + 1 if pair else self.line
        self.walk.report(line, _join(self.path, key) if key else self.path, message)

    def done(self) -> None:
        for name, (key_node, _) in self._pairs.items():
            if name in self._known:
                continue
            close = difflib.get_close_matches(name, self._known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected {', '.join(self._known)}"
            line = int(key_node.start_mark.line) + 1
            self.walk.report(line, _join(self.path, name), f"unknown key; {hint}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _section(build: Callable[[_Map], T]) -> Callable[[_At], T]:
    """A converter for a mapping read by ``build``; unknown keys are reported after it ran."""

    def convert(at: _At) -> T:
        if not isinstance(at.node, MappingNode):
            raise _wrong_type(at, "a mapping")
        section = _Map.of(at)
        result = build(section)
        section.done()
        return result

    return convert


def _items(at: _At, convert: Callable[[_At], T]) -> list[tuple[_At, T]]:
    out: list[tuple[_At, T]] = []
    for i, node in enumerate(at.node.value):
        item = _At(at.walk, node, f"{at.path}[{i}]")
        try:
            out.append((item, convert(item)))
        except _Invalid as e:
            item.report(e.message)
    return out


def _list_of(convert: Callable[[_At], T]) -> Callable[[_At], tuple[T, ...]]:
    def convert_list(at: _At) -> tuple[T, ...]:
        if not isinstance(at.node, SequenceNode):
            raise _wrong_type(at, "a list")
        return tuple(value for _, value in _items(at, convert))

    return convert_list


def _distinct(
    items: Iterable[tuple[_At, T]], key: Callable[[T], Hashable], field: str | None = None
) -> None:
    """Report every item whose ``key`` an earlier item already has."""
    seen: dict[Hashable, _At] = {}
    for at, value in items:
        k = key(value)
        if k is None:
            continue
        if k in seen:
            (at.field(field) if field else at).report(f"{k} is already used by {seen[k].path}")
        else:
            seen[k] = at


# --- converters: (_At) -> value, raising _Invalid --------------------------


def _kind(value: object) -> str:
    if isinstance(value, MappingNode):
        return "a mapping"
    if isinstance(value, SequenceNode):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    return f"a {type(value).__name__}"


def _wrong_type(at: _At, expected: str, *, quote_hint: bool = False) -> _Invalid:
    value = at.scalar()
    message = f"must be {expected}, not {_kind(value)}"
    if quote_hint and isinstance(at.node, ScalarNode) and not isinstance(value, str):
        # YAML 1.1 turns no, on, 0644 and 1:30 into booleans and numbers.
        message += f'; YAML reads {at.node.value} as {_kind(value)}, so quote it: "{at.node.value}"'
    return _Invalid(message)


def _str(at: _At) -> str:
    value = at.scalar()
    if not isinstance(value, str):
        raise _wrong_type(at, "a string", quote_hint=True)
    if not value.strip():
        raise _Invalid("must not be empty")
    return value


def _bool(at: _At) -> bool:
    value = at.scalar()
    if not isinstance(value, bool):
        raise _wrong_type(at, "true or false")
    return value


def _int(at: _At) -> int:
    value = at.scalar()
    # bool is an int subclass: "yes" must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(at, "a whole number")
    return value


def _number(at: _At) -> float:
    value = at.scalar()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(at, "a number")
    if not math.isfinite(value):
        raise _Invalid("must be a finite number")
    return float(value)


def _port(at: _At) -> int:
    port = _int(at)
    if not 1 <= port <= 65535:
        raise _Invalid(f"{port} is not a port; must be 1..65535")
    return port


def _choice(*options: str) -> Callable[[_At], str]:
    def convert(at: _At) -> str:
        value = at.scalar()
        if value not in options:
            raise _Invalid(f"must be one of {', '.join(options)}")
        return value

    return convert


def _parsed(parse: Callable[[str], T], example: str) -> Callable[[_At], T]:
    """A converter for text read by ``parse``; a bare YAML number gets a hint to add a unit."""

    def convert(at: _At) -> T:
        value = at.scalar()
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise _Invalid(
                f"{at.node.value} has no unit; write it as text with a unit, e.g. {example}"
            )
        if not isinstance(value, str):
            raise _wrong_type(at, f"text such as {example}")
        try:
            return parse(value)
        except ValueError as e:
            raise _Invalid(str(e)) from None

    return convert


_duration = _parsed(parse_duration, '"30s" (units: ms, s, m, h)')
_rate = _parsed(parse_rate, '"1Gbit" (bits per second: kbit, Mbit, Gbit)')


def _capacity(at: _At) -> int | None:
    return None if at.scalar() == "auto" else _rate(at)


def _size(at: _At) -> int:
    value = at.scalar()
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise _Invalid("must be positive")
        return value
    if not isinstance(value, str):
        raise _wrong_type(at, 'a number of bytes or text such as "256MiB"')
    try:
        return parse_size(value)
    except ValueError as e:
        raise _Invalid(str(e)) from None


def _ratio(at: _At) -> float:
    value = _number(at)
    if not 0 < value <= 1:
        raise _Invalid(
            f"{value:g} is not in (0, 1]; e.g. 0.5 refuses a feed that removes over half"
        )
    return value


def _percent(at: _At) -> float:
    value = _number(at)
    if not 0 < value <= 100:
        raise _Invalid(f"{value:g} must be more than 0 and at most 100")
    return value


_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _node_name(at: _At) -> str:
    # It travels in an HTTP header and in URLs: keep it to hostname-like characters.
    name = _str(at)
    if not _NODE_NAME.fullmatch(name):
        raise _Invalid(
            "must be 1..63 letters, digits, '.', '-' or '_', starting with a letter or digit"
        )
    return name


def _ifname(at: _At) -> str:
    name = _str(at)
    # IFNAMSIZ is 16 with the terminating NUL; the kernel's dev_valid_name() refuses the rest.
    if len(name) > 15:
        raise _Invalid(f"{name} is longer than 15 characters, the kernel's limit")
    if any(c in "/:" or c.isspace() for c in name) or name in (".", ".."):
        raise _Invalid(f"{name!r} is not an interface name: no '/', ':' or whitespace")
    return name


def _path(at: _At) -> str:
    return os.path.normpath(at.walk.base / _str(at))


def _socket_path(at: _At) -> str:
    path = _str(at)
    if not path.startswith("/"):
        raise _Invalid("must be an absolute path")
    return path


def _existing_file(at: _At) -> str:
    path = _path(at)
    try:
        st = os.stat(path)
    except OSError as e:
        raise _Invalid(f"{path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise _Invalid(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise _Invalid(f"{path}: Permission denied")
    return path


def _feed_path(at: _At) -> str:
    # A missing feed file is a state, not a mistake: the agent starts fail-static
    # (leaves the kernel as it is) and applies the file once it appears. Its
    # directory must exist, though, or the file could never be watched for.
    path = _path(at)
    if not os.path.isdir(os.path.dirname(path)):
        raise _Invalid(f"{os.path.dirname(path)}: No such directory")
    if os.path.lexists(path):
        return _existing_file(at)
    return path


def _checked_by(read: Callable[[str], bytes]) -> Callable[[_At], str]:
    """A converter for a secret file's path; the file is read now, to find problems early."""

    def convert(at: _At) -> str:
        path = _path(at)
        try:
            read(path)
        except OSError as e:
            raise _Invalid(f"{path}: {e.strerror}") from None
        except ValueError as e:
            raise _Invalid(str(e)) from None
        return path

    return convert


_secret_file = _checked_by(read_secret)
_private_key_file = _checked_by(read_private_key)


def _url(at: _At) -> str:
    url = _str(at)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in url):
        raise _Invalid("must be an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        raise _Invalid("must not contain credentials; put them in a token or secret file")
    return url


_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _host_port(at: _At) -> str:
    text = _str(at)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        sep, port = rest[:1], rest[1:]
        if sep != ":":
            raise _Invalid(f"{text} needs a port, as in [::1]:9586")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _Invalid(f"{text} is not [IPv6 address]:port") from None
    elif ":" not in text:
        raise _Invalid(f"{text} needs a port, as in 127.0.0.1:9586")
    else:
        host, sep, port = text.rpartition(":")
        if ":" in host:
            raise _Invalid(f"write IPv6 addresses in brackets, as in [{host}]:{port}")
        looks_numeric = bool(re.fullmatch(r"[\d.]+", host))
        if looks_numeric:
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise _Invalid(f"{host} is not an IPv4 address") from None
        elif not _HOSTNAME.fullmatch(host):
            raise _Invalid(f"{text} is not host:port")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _Invalid(f"{text} needs a port 1..65535, as in 127.0.0.1:9586 or [::1]:9586")
    return text


def _management(at: _At) -> str:
    # OpenVPN's management interface listens on a unix socket or on TCP.
    text = _str(at)
    return _socket_path(at) if "/" in text else _host_port(at)


def _ip_interface(at: _At) -> str:
    text = _str(at)
    try:
        if "/" not in text:
            raise ValueError
        return str(ipaddress.ip_interface(text))
    except ValueError:
        raise _Invalid(
            f"{text} is not an address with a prefix length, as in 10.8.0.1/16"
        ) from None


def _backend(at: _At) -> Literal["kernel", "userspace"]:
    return cast(Literal["kernel", "userspace"], _choice("kernel", "userspace")(at))


# --- sections --------------------------------------------------------------


def _node(m: _Map) -> str:
    return m.require("name", _node_name, "")


def _wireguard_interface(m: _Map) -> WireguardInterfaceConfig:
    name = m.require("name", _ifname, "")
    backend: Literal["kernel", "userspace"] = m.get("backend", _backend, "kernel")
    # uapi_socket only matters for userspace, and the key, port and addresses only
    # with create: true; elsewhere they are checked but unused (DESIGN.md's example
    # lists them all on one interface).
    uapi_socket = m.get("uapi_socket", _socket_path, f"/var/run/wireguard/{name}.sock")
    create = m.get("create", _bool, False)
    if create:
        key_file = m.require("private_key_file", _private_key_file, None, by="create")
        listen_port = m.require("listen_port", _port, None, by="create")
    else:
        key_file = m.get("private_key_file", _private_key_file, None)
        listen_port = m.get("listen_port", _port, None)
    addresses: tuple[str, ...] = m.get("addresses", _list_of(_ip_interface), ())
    return WireguardInterfaceConfig(
        name, backend, uapi_socket, create, key_file, listen_port, addresses
    )


def _wireguard(m: _Map) -> WireguardConfig:
    interfaces = m.items("interfaces", _section(_wireguard_interface))
    _distinct(interfaces, lambda i: i.name, "name")
    _distinct(interfaces, lambda i: i.listen_port, "listen_port")
    _distinct(
        [(at, i) for at, i in interfaces if i.backend == "userspace"],
        lambda i: i.uapi_socket,
        "uapi_socket",
    )
    return WireguardConfig(
        interfaces=tuple(i for _, i in interfaces),
        resync_interval=m.get("resync_interval", _duration, 60.0),
    )


def _feed(m: _Map) -> FeedConfig:
    if m.has("url") and m.has("path"):
        m.problem("path", "give either url or path, not both")
    elif not (m.has("url") or m.has("path")):
        m.problem(None, "needs exactly one of url or path")
    url = m.get("url", _url, None)
    path = m.get("path", _feed_path, None)
    token_file: str | None = None
    ca_file: str | None = None
    if m.has("url"):
        token_file = m.get("token_file", _secret_file, None)
        if url is None or url.startswith("https:"):
            ca_file = m.get("ca_file", _existing_file, None)
        else:
            m.forbid("ca_file", "with an https url")
    else:
        m.forbid("token_file", "with url")
        m.forbid("ca_file", "with url")
    return FeedConfig(
        url=url,
        path=path,
        token_file=token_file,
        ca_file=ca_file,
        long_poll=m.get("long_poll", _duration, 30.0),
        max_removal_ratio=m.get("max_removal_ratio", _ratio, 0.5),
        max_bytes=m.get("max_bytes", _size, 512 << 20),
    )


def _openvpn_instance(m: _Map) -> OpenVPNInstanceConfig:
    return OpenVPNInstanceConfig(
        management=m.require("management", _management, ""),
        interface=m.require("interface", _ifname, ""),
    )


def _openvpn(m: _Map) -> tuple[OpenVPNInstanceConfig, ...]:
    instances = m.items("instances", _section(_openvpn_instance))
    _distinct(instances, lambda i: i.management, "management")
    _distinct(instances, lambda i: i.interface, "interface")
    return tuple(i for _, i in instances)


def _load(m: _Map) -> LoadConfig:
    interfaces = m.items("interfaces", _ifname, required=True)
    # The same link twice would count its traffic twice.
    _distinct(interfaces, lambda name: name)
    sample_interval = m.get("sample_interval", _duration, 5.0)
    window = m.get("window", _duration, 60.0)
    if window < sample_interval:
        m.problem("window", "must be at least sample_interval")
    return LoadConfig(
        interfaces=tuple(name for _, name in interfaces),
        capacity_bps=m.get("capacity", _capacity, None),
        sample_interval=sample_interval,
        window=window,
        resolution_percent=m.get("resolution_percent", _percent, 1.0),
    )


def _tls(m: _Map) -> TLSConfig:
    return TLSConfig(
        cert_file=m.require("cert_file", _existing_file, ""),
        key_file=m.require("key_file", _secret_file, ""),
    )


def _http(m: _Map) -> HTTPConfig:
    listen = m.items("listen", _host_port, required=m.has("listen"))
    _distinct(listen, lambda address: address)
    return HTTPConfig(
        listen=tuple(a for _, a in listen) if m.has("listen") else (DEFAULT_HTTP_LISTEN,),
        token_file=m.get("token_file", _secret_file, None),
        tls=m.get("tls", _section(_tls), None),
    )


def _push(m: _Map) -> PushConfig:
    interval = m.get("interval", _duration, 60.0)
    if interval < 1:
        # The collector refuses a timestamp (whole seconds) not newer than the last one.
        m.problem("interval", "must be at least 1s")
    return PushConfig(
        url=m.require("url", _url, ""),
        secret_file=m.require("secret_file", _secret_file, ""),
        interval=interval,
    )


def _privacy(m: _Map) -> PrivacyConfig:
    idle = m.get("scrub_idle_after", _duration, MIN_SCRUB_IDLE_AFTER)
    if idle < MIN_SCRUB_IDLE_AFTER:
        m.problem(
            "scrub_idle_after",
            "must be at least 180s: WireGuard re-handshakes a session in use every 120s and "
            "drops its keys at 180s, so a shorter threshold would cut live sessions",
        )
    return PrivacyConfig(
        scrub_idle_after=idle,
        scrub_interval=m.get("scrub_interval", _duration, 30.0),
    )


def _log(m: _Map) -> LogConfig:
    return LogConfig(
        level=m.get("level", _choice("debug", "info", "warning", "error"), "info"),
        format=m.get("format", _choice("text", "json"), "text"),
    )


_NO_FEED = FeedConfig(None, None, None, None, 30.0, 0.5, 512 << 20)


def _config(m: _Map, path: str) -> Config:
    return Config(
        path=path,
        node_name=m.require("node", _section(_node), ""),
        wireguard=m.section("wireguard", _wireguard),
        feed=m.require("feed", _section(_feed), _NO_FEED),
        openvpn=m.get("openvpn", _section(_openvpn), ()),
        load=m.get("load", _section(_load), None),
        http=m.get("http", _section(_http), None),
        push=m.get("push", _section(_push), None),
        privacy=m.section("privacy", _privacy),
        log=m.section("log", _log),
    )


# --- entry point -----------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read and check the configuration at ``path``; ``ConfigError`` lists every problem."""
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_CONFIG_BYTES + 1)
    except OSError as e:
        raise ConfigError([Problem(file, None, "", f"cannot read: {e.strerror}")]) from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError([Problem(file, None, "", f"larger than {MAX_CONFIG_BYTES} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, None, "", "is not UTF-8 text")]) from None

    loader = yaml.SafeLoader(text)
    try:
        walk = _Walk(file, Path(path).absolute().parent, loader)
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else None
            raise ConfigError([Problem(file, line, "", f"not valid YAML: {e.problem}")]) from None
        except yaml.YAMLError as e:
            raise ConfigError([Problem(file, None, "", f"not valid YAML: {e}")]) from None
        if root is None:
            top = _Map(walk, "", 1, {})
        elif isinstance(root, MappingNode):
            top = _Map.of(_At(walk, root, ""))
        else:
            raise ConfigError([Problem(file, 1, "", "the top level must be a mapping of sections")])
        config = _config(top, file)
        top.done()
    finally:
        loader.dispose()
    if walk.problems:
        raise ConfigError(sorted(walk.problems, key=lambda p: p.line or 0))
    return config
