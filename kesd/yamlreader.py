"""A schema-driven reader of YAML config text that keeps every value as written (pure).

It works on PyYAML's node tree, never on constructed objects, so each scalar keeps its text
(``on``/``off`` stay words, as in Go's yaml.v3), its line number and its dotted field path. Against a
schema of :class:`Scalar`, :class:`ScalarList`, :class:`MapOf`, :class:`ListOf`, :class:`Ignored` and
nested mappings it substitutes ``${NAME}`` values, refuses duplicate keys and unknown fields, and
collects warnings for ignored ones; the config's meaning is checked elsewhere (kesd.config).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeAlias

import yaml

from kesd.errors import ConfigError
from kesd.quoting import quote as _q


@dataclass(frozen=True)
class Scalar:
    """One value; ``subst`` = ``${NAME}`` is replaced from the environment."""

    subst: bool = True


@dataclass(frozen=True)
class ScalarList:
    """A list of values."""

    subst: bool = True


@dataclass(frozen=True)
class MapOf:
    """A mapping with free keys (policy names, API paths), each value of one shape."""

    value: Spec


@dataclass(frozen=True)
class ListOf:
    """A list of mappings of one shape."""

    item: Spec


@dataclass(frozen=True)
class Ignored:
    """A field an older KES release used: accepted, dropped, reported as a warning."""

    reason: str


Spec: TypeAlias = "Scalar | ScalarList | MapOf | ListOf | Ignored | Mapping[str, Spec]"

_NULL_TAG = "tag:yaml.org,2002:null"
_MERGE_TAG = "tag:yaml.org,2002:merge"


class Reader:
    """Walks the YAML node tree of one file, collecting warnings and raising ConfigErrors."""

    def __init__(self, file: str, env: Mapping[str, str]) -> None:
        self.file = file
        self.env = env
        self.warnings: list[str] = []
        self._loader: yaml.SafeLoader | None = None

    def error(self, reason: str, field: str, value: object = None) -> ConfigError:
        """A one-line ConfigError for ``field`` of this file."""
        return ConfigError(" ".join(reason.split()), file=self.file, field=field, value=value)

    def warn(self, field: str, reason: str) -> None:
        """Record that ``field`` is accepted but has no effect."""
        self.warnings.append(f"{self.file}: field {field} is ignored ({reason})")

    def compose(self, text: str) -> yaml.Node | None:
        """The document's root node (None for an empty file); YAML syntax errors become ConfigErrors."""
        self._loader = yaml.SafeLoader(text)
        try:
            return self._loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise self.error(f"invalid YAML: {exc.problem}{where}", "") from None
        except yaml.YAMLError as exc:
            raise self.error(f"invalid YAML: {exc}", "") from None

    def read(self, node: yaml.Node | None, spec: Spec, path: str) -> Any:
        """The plain value of ``node`` shaped by ``spec``: str, tuple, or dict of those."""
        if isinstance(spec, Scalar):
            return self.scalar(node, path, subst=spec.subst)
        if isinstance(spec, ScalarList):
            subst = spec.subst
            return self.sequence(node, path, lambda n, p: self.scalar(n, p, subst=subst))
        if isinstance(spec, ListOf):
            item = spec.item
            return self.sequence(node, path, lambda n, p: self.read(n, item, p))
        if isinstance(spec, MapOf):
            return {k: self.read(v, spec.value, _join(path, k)) for k, v in self.pairs(node, path).items()}
        assert isinstance(spec, Mapping)
        out: dict[str, Any] = {}
        for key, value in self.pairs(node, path).items():
            child = _join(path, key)
            sub = spec.get(key)
            if sub is None:
                raise self.error(_unknown(key, spec), child, key)
            if isinstance(sub, Ignored):
                self.warn(child, sub.reason)
                continue
            out[key] = self.read(value, sub, child)
        return out

    def pairs(self, node: yaml.Node | None, path: str) -> dict[str, yaml.Node]:
        """A mapping node's entries by key text (merge keys applied); duplicate keys are refused."""
        if node is None or _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            raise self.error(f"expected a section of 'field: value' lines, found {_kind(node)}", path)
        seen: dict[str, int] = {}
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise self.error(f"field names must be plain text, found {_kind(key_node)}", path)
            if key_node.tag == _MERGE_TAG:
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in seen:
                raise self.error(
                    f"field defined twice (lines {seen[key_node.value]} and {line})",
                    _join(path, key_node.value),
                )
            seen[key_node.value] = line
        assert self._loader is not None
        try:
            self._loader.flatten_mapping(node)
        except yaml.YAMLError as exc:
            raise self.error(f"invalid YAML merge: {getattr(exc, 'problem', exc)}", path) from None
        return {key.value: value for key, value in node.value}

    def sequence(
        self, node: yaml.Node | None, path: str, item: Callable[[yaml.Node, str], Any]
    ) -> tuple[Any, ...]:
        """A list node's items, each converted by ``item`` with its ``path[i]``."""
        if node is None or _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            raise self.error(f"expected a list ('- value' lines), found {_kind(node)}", path)
        return tuple(item(child, f"{path}[{i}]") for i, child in enumerate(node.value))

    def scalar(self, node: yaml.Node | None, path: str, *, subst: bool) -> str:
        """A single value's text as written (null → ""), with whole-value ``${NAME}`` substitution."""
        if node is None or _is_null(node):
            return ""
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(f"expected a single value, found {_kind(node)}", path)
        text: str = node.value
        stripped = text.strip()
        if subst and stripped.startswith("${") and stripped.endswith("}"):
            name = stripped[2:-1].strip()
            if name not in self.env:
                line = node.start_mark.line + 1
                raise self.error(f"referenced env. variable '{name}' in line '{line}' not found", path, text)
            return self.env[name]
        return text


def _is_null(node: yaml.Node) -> bool:
    """True for a plain ``~``/``null``/empty scalar, which Go decodes as the zero value."""
    return isinstance(node, yaml.ScalarNode) and node.tag == _NULL_TAG


def _kind(node: yaml.Node) -> str:
    """How a node reads in an error message (never its text: it may be a misplaced secret)."""
    if isinstance(node, yaml.MappingNode):
        return "a section"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a single value"


def _unknown(key: str, known: Mapping[str, Any]) -> str:
    """The reason for an unknown field, with a "did you mean" hint when a known field is close."""
    names = [name for name, spec in known.items() if not isinstance(spec, Ignored)]
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known fields: {', '.join(names)})"
    return f"unknown field {_q(key)}{hint}"


def _join(path: str, key: str) -> str:
    """The dotted path of ``key`` under ``path``."""
    return f"{path}.{key}" if path else key
