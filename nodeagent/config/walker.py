"""The schema walker: a YAML node tree read key by key, every problem kept with its line.

The YAML is composed into nodes rather than loaded into dicts, because only
nodes keep line numbers. A builder is handed a ``Map`` and asks it for each key
with a converter, a function ``(At) -> value`` that raises ``Invalid``, and so
reads like the schema it checks. Nothing stops at the first problem: each one
is collected as a ``Problem`` (``FILE:LINE: key.path: what is wrong``) and the
walk goes on with a placeholder, so that one ``ConfigError`` lists them all. An
operator fixing a config on a node should see everything wrong in one run, not
one problem per restart.

Keys nobody asked for are reported as unknown, with a guess at the key meant.
Explicitly empty values (``key:`` with nothing after it) count as absent, so
that commenting out a section's body behaves like commenting out the section.

Reading the file into a tree is ``nodeagent.config.yamlfile``; the converters
for plain values are ``nodeagent.config.values``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = [
    "At",
    "ConfigError",
    "Invalid",
    "Map",
    "Problem",
    "Walk",
    "distinct",
    "list_of",
    "section",
    "wrong_type",
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


class Invalid(Exception):
    """Raised by a converter; reported at the node being converted."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Walk:
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

    walk: Walk
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
        self, walk: Walk, path: str, line: int, pairs: dict[str, tuple[Node, Node]]
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
            at.report(wrong_type(at, "a list").message)
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
            raise wrong_type(at, "a mapping")
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
            raise wrong_type(at, "a list")
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


def wrong_type(at: At, expected: str, *, quote_hint: bool = False) -> Invalid:
    """The problem with a value of the wrong type: what was expected, and what was given."""
    value = at.scalar()
    message = f"must be {expected}, not {_kind(value)}"
    if quote_hint and isinstance(at.node, ScalarNode) and not isinstance(value, str):
        # YAML 1.1 turns no, on, 0644 and 1:30 into booleans and numbers.
        message += f'; YAML reads {at.node.value} as {_kind(value)}, so quote it: "{at.node.value}"'
    return Invalid(message)
