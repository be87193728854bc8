"""Reading a configuration file into the schema walker: size, encoding, YAML, the top mapping.

``read_mapping`` reads a file (at most ``max_bytes``), composes its YAML into
line-numbered nodes, hands the top-level mapping, as a ``Map``, to a builder,
and raises one ``ConfigError`` with every problem the walk found, sorted by
line, or with the one reason the file could not be read at all.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml
from yaml.nodes import MappingNode

from nodeagent.config.walker import At, ConfigError, Map, Problem, Walk

__all__ = ["read_mapping"]

T = TypeVar("T")


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
        walk = Walk(file, Path(path).absolute().parent, loader)
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
