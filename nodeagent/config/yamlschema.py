"""Checking a YAML file against a schema written as code, every problem at its line.

The YAML is composed into nodes rather than loaded into dicts, because only
nodes keep line numbers. ``read_mapping`` reads a file and hands its top-level
mapping, as a ``Map``, to a builder; the builder asks the ``Map`` for each key
with a converter, a function ``(At) -> value`` that raises ``Invalid``, and so
reads like the schema it checks. Nothing stops at the first problem: each one
is collected as a ``Problem`` (``FILE:LINE: key.path: what is wrong``) and the
walk goes on with a placeholder, so that one ``ConfigError`` lists them all. An
operator fixing a config on a node should see everything wrong in one run, not
one problem per restart.

Keys nobody asked for are reported as unknown, with a guess at the key meant.
Explicitly empty values (``key:`` with nothing after it) count as absent, so
that commenting out a section's body behaves like commenting out the section.
Relative file paths are taken relative to the file's directory, and returned
absolute.

The converters here are about YAML values and files and know nothing of what
the file configures; those for names, addresses and secrets live beside the
schema that uses them.
"""

from __future__ import annotations

import difflib
import math
import os
import stat
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from nodeagent.config.units import parse_duration, parse_rate, parse_size

__all__ = [
    "At",
    "ConfigError",
    "Invalid",
    "Map",
    "Problem",
    "boolean",
    "checked_by",
    "choice",
    "distinct",
    "duration",
    "existing_file",
    "list_of",
    "number",
    "percent",
    "port",
    "rate",
    "read_mapping",
    "relative_path",
    "section",
    "size",
    "string",
]

T = TypeVar("T")
_NULL_TAG = "tag:yaml.org,2002:null"


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


# --- the walker ------------------------------------------------------------


class Invalid(Exception):
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
class At:
    """A YAML node and the dotted key path that leads to it."""

    walk: _Walk
    node: Node
    path: str

    @property
    def line(self) -> int:
        return int(self.node.start_mark.line) + 1

    def report(self, message: str) -> None:
        """Record a problem at this node's line and key path."""
        self.walk.report(self.line, self.path, message)

    def scalar(self) -> object:
        """The Python value of a scalar node; the node itself for a list or a mapping."""
        if not isinstance(self.node, ScalarNode):
            return self.node
        try:
            return self.walk.loader.construct_object(self.node, deep=True)
        except yaml.YAMLError as e:
            # Unknown tags (!env …) land here.
            raise Invalid(f"cannot be read: {getattr(e, 'problem', None) or e}") from None
        except (ValueError, LookupError, AttributeError, TypeError, OverflowError):
            # PyYAML's own constructors fail this way on impossible dates (2001-13-01),
            # integers beyond Python's digit limit and explicit tags on unfit text
            # (!!int '', !!bool maybe, !!timestamp soon).
            tag = str(self.node.tag).replace("tag:yaml.org,2002:", "!!")
            raise Invalid(f"cannot be read as {tag}; quote it to make it text") from None

    def field(self, key: str) -> At:
        """The value at ``key`` if this is a mapping that has it, else this node under that path."""
        if isinstance(self.node, MappingNode):
            for k, v in self.node.value:
                if isinstance(k, ScalarNode) and k.value == key:
                    return At(self.walk, v, f"{self.path}.{key}")
        return At(self.walk, self.node, f"{self.path}.{key}")


def _is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == _NULL_TAG


class Map:
    """One YAML mapping being read: hands out values by key, then reports keys nobody asked for."""

    def __init__(
        self, walk: _Walk, path: str, line: int, pairs: dict[str, tuple[Node, Node]]
    ) -> None:
        self.walk = walk
        self.path = path
        self.line = line
        self._pairs = pairs
        self._known: list[str] = []

    @classmethod
    def of(cls, at: At) -> Map:
        """The mapping at ``at``, which must be a mapping node; bad and duplicate keys reported."""
        pairs: dict[str, tuple[Node, Node]] = {}
        for key_node, value_node in at.node.value:
            key_at = At(at.walk, key_node, at.path)
            if not isinstance(key_node, ScalarNode):
                key_at.report("keys must be plain names")
                continue
            name = str(key_node.value)
            if name == "<<":
                key_at.report("YAML merge keys (<<) are not supported; write the keys out")
                continue
            child = At(at.walk, key_node, _join(at.path, name))
            if name in pairs:
                first = int(pairs[name][0].start_mark.line) + 1
                child.report(f"duplicate key (first given on line {first})")
                continue
            pairs[name] = (key_node, value_node)
        return cls(at.walk, at.path, at.line, pairs)

    def take(self, key: str) -> At | None:
        """The value at ``key``, or None if absent or empty. Marks ``key`` as known."""
        self._known.append(key)
        pair = self._pairs.get(key)
        if pair is None or _is_null(pair[1]):
            return None
        return At(self.walk, pair[1], _join(self.path, key))

    def has(self, key: str) -> bool:
        """Whether ``key`` is given a value; unlike ``take``, does not mark it known."""
        pair = self._pairs.get(key)
        return pair is not None and not _is_null(pair[1])

    def get(self, key: str, convert: Callable[[At], T], default: T) -> T:
        """The converted value at ``key``; ``default`` if absent (or invalid, after reporting)."""
        at = self.take(key)
        if at is None:
            return default
        try:
            return convert(at)
        except Invalid as e:
            at.report(e.message)
            return default

    def require(
        self, key: str, convert: Callable[[At], T], placeholder: T, *, by: str | None = None
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
        self, key: str, convert: Callable[[At], T], *, required: bool = False
    ) -> list[tuple[At, T]]:
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

    def section(self, key: str, build: Callable[[Map], T]) -> T:
        """A sub-mapping read by ``build``; when absent, read from no keys, so defaults apply."""
        at = self.take(key)
        if at is not None:
            try:
                return section(build)(at)
            except Invalid as e:
                at.report(e.message)
        empty = Map(self.walk, _join(self.path, key), at.line if at else self.line, {})
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
        """Report every key that no ``take`` (or ``get``, ``require`` …) asked for."""
        for name, (key_node, _) in self._pairs.items():
            if name in self._known:
                continue
            close = difflib.get_close_matches(name, self._known, n=1)
            hint = f"did you mean {close[0]}?" if close else f"expected {', '.join(self._known)}"
            line = int(key_node.start_mark.line) + 1
            self.walk.report(line, _join(self.path, name), f"unknown key; {hint}")


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def section(build: Callable[[Map], T]) -> Callable[[At], T]:
    """A converter for a mapping read by ``build``; unknown keys are reported after it ran."""

    def convert(at: At) -> T:
        if not isinstance(at.node, MappingNode):
            raise _wrong_type(at, "a mapping")
        m = Map.of(at)
        result = build(m)
        m.done()
        return result

    return convert


def _items(at: At, convert: Callable[[At], T]) -> list[tuple[At, T]]:
    out: list[tuple[At, T]] = []
    for i, node in enumerate(at.node.value):
        item = At(at.walk, node, f"{at.path}[{i}]")
        try:
            out.append((item, convert(item)))
        except Invalid as e:
            item.report(e.message)
    return out


def list_of(convert: Callable[[At], T]) -> Callable[[At], tuple[T, ...]]:
    """A converter for a list whose items ``convert`` reads; bad items are reported and left out."""

    def convert_list(at: At) -> tuple[T, ...]:
        if not isinstance(at.node, SequenceNode):
            raise _wrong_type(at, "a list")
        return tuple(value for _, value in _items(at, convert))

    return convert_list


def distinct(
    items: Iterable[tuple[At, T]], key: Callable[[T], Hashable], field: str | None = None
) -> None:
    """Report every item whose ``key`` an earlier item already has."""
    seen: dict[Hashable, At] = {}
    for at, value in items:
        k = key(value)
        if k is None:
            continue
        if k in seen:
            (at.field(field) if field else at).report(f"{k} is already used by {seen[k].path}")
        else:
            seen[k] = at


# --- converters: (At) -> value, raising Invalid ----------------------------


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


def _wrong_type(at: At, expected: str, *, quote_hint: bool = False) -> Invalid:
    """The problem with a value of the wrong type: what was expected, and what was given."""
    value = at.scalar()
    message = f"must be {expected}, not {_kind(value)}"
    if quote_hint and isinstance(at.node, ScalarNode) and not isinstance(value, str):
        # YAML 1.1 turns no, on, 0644 and 1:30 into booleans and numbers.
        message += f'; YAML reads {at.node.value} as {_kind(value)}, so quote it: "{at.node.value}"'
    return Invalid(message)


def string(at: At) -> str:
    """Non-blank text; a YAML 1.1 boolean or number gets a hint to quote it."""
    value = at.scalar()
    if not isinstance(value, str):
        raise _wrong_type(at, "a string", quote_hint=True)
    if not value.strip():
        raise Invalid("must not be empty")
    return value


def boolean(at: At) -> bool:
    """``true`` or ``false``."""
    value = at.scalar()
    if not isinstance(value, bool):
        raise _wrong_type(at, "true or false")
    return value


def _int(at: At) -> int:
    value = at.scalar()
    # bool is an int subclass: "yes" must not become 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise _wrong_type(at, "a whole number")
    return value


def number(at: At) -> float:
    """A finite integer or decimal number, as a float; booleans are refused."""
    value = at.scalar()
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _wrong_type(at, "a number")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond any float
        raise Invalid("must be a finite number") from None
    if not math.isfinite(result):
        raise Invalid("must be a finite number")
    return result


def port(at: At) -> int:
    """A TCP or UDP port number, 1..65535."""
    value = _int(at)
    if not 1 <= value <= 65535:
        raise Invalid(f"{value} is not a port; must be 1..65535")
    return value


def percent(at: At) -> float:
    """A number more than 0 and at most 100."""
    value = number(at)
    if not 0 < value <= 100:
        raise Invalid(f"{value:g} must be more than 0 and at most 100")
    return value


def choice(*options: str) -> Callable[[At], str]:
    """A converter for one of ``options``."""

    def convert(at: At) -> str:
        value = at.scalar()
        if value not in options:
            raise Invalid(f"must be one of {', '.join(options)}")
        return value

    return convert


def _parsed(parse: Callable[[str], T], example: str) -> Callable[[At], T]:
    """A converter for text read by ``parse``; a bare YAML number gets a hint to add a unit."""

    def convert(at: At) -> T:
        value = at.scalar()
        if isinstance(value, int | float) and not isinstance(value, bool):
            raise Invalid(
                f"{at.node.value} has no unit; write it as text with a unit, e.g. {example}"
            )
        if not isinstance(value, str):
            raise _wrong_type(at, f"text such as {example}")
        try:
            return parse(value)
        except ValueError as e:
            raise Invalid(str(e)) from None

    return convert


# Seconds and bits per second, as nodeagent.units parses them.
duration = _parsed(parse_duration, '"30s" (units: ms, s, m, h)')
rate = _parsed(parse_rate, '"1Gbit" (bits per second: kbit, Mbit, Gbit)')


def size(at: At) -> int:
    """A positive number of bytes, as a bare number or with a unit (``256MiB``)."""
    value = at.scalar()
    if isinstance(value, int) and not isinstance(value, bool):
        if value <= 0:
            raise Invalid("must be positive")
        return value
    if not isinstance(value, str):
        raise _wrong_type(at, 'a number of bytes or text such as "256MiB"')
    try:
        return parse_size(value)
    except ValueError as e:
        raise Invalid(str(e)) from None


def relative_path(at: At) -> str:
    """A path, taken relative to the file's directory; returned absolute and normalized."""
    return os.path.normpath(at.walk.base / string(at))


def existing_file(at: At) -> str:
    """A readable regular file's path, as ``relative_path`` returns it."""
    path = relative_path(at)
    try:
        st = os.stat(path)
    except OSError as e:
        raise Invalid(f"{path}: {e.strerror}") from None
    except ValueError:  # a NUL, or a character the file system encoding cannot write
        raise Invalid("is not a usable file name") from None
    if not stat.S_ISREG(st.st_mode):
        raise Invalid(f"{path} is not a regular file")
    if not os.access(path, os.R_OK):
        raise Invalid(f"{path}: Permission denied")
    return path


def checked_by(read: Callable[[str], bytes]) -> Callable[[At], str]:
    """A converter for a secret file's path; the file is read now, to find problems early."""

    def convert(at: At) -> str:
        path = relative_path(at)
        try:
            read(path)
        except OSError as e:
            raise Invalid(f"{path}: {e.strerror}") from None
        except ValueError as e:
            raise Invalid(str(e)) from None
        return path

    return convert


# --- entry point -----------------------------------------------------------


def read_mapping(path: str | Path, build: Callable[[Map], T], *, max_bytes: int) -> T:
    """Read the YAML file at ``path`` and build a value from its top-level mapping.

    ``build`` is given the top-level ``Map``; keys it did not ask for are then
    reported as unknown. Raises one ``ConfigError`` with every problem, sorted
    by line, or with the one reason the file could not be read at all.
    """
    file = str(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise ConfigError([Problem(file, None, "", f"cannot read: {e.strerror}")]) from None
    if len(data) > max_bytes:
        raise ConfigError([Problem(file, None, "", f"larger than {max_bytes} bytes")])
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError([Problem(file, None, "", "is not UTF-8 text")]) from None

    try:
        loader = yaml.SafeLoader(text)
    except yaml.reader.ReaderError as e:
        # Control characters: the reader refuses the whole text before parsing it.
        problem = str(e).split("\n", 1)[0]
        at_line = text.count("\n", 0, e.position) + 1
        raise ConfigError([Problem(file, at_line, "", f"not valid YAML: {problem}")]) from None
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
        except RecursionError:
            # PyYAML composes nested collections recursively.
            raise ConfigError(
                [Problem(file, None, "", "not valid YAML: nested too deeply")]
            ) from None
        if root is None:
            top = Map(walk, "", 1, {})
        elif isinstance(root, MappingNode):
            top = Map.of(At(walk, root, ""))
        else:
            raise ConfigError([Problem(file, 1, "", "the top level must be a mapping of sections")])
        result = build(top)
        top.done()
    finally:
        loader.dispose()
    if walk.problems:
        raise ConfigError(sorted(walk.problems, key=lambda p: p.line or 0))
    return result
