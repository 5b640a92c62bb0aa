"""Reading composed YAML nodes with the line of every problem: mappings (merge keys
included), sequences, strings, numbers, durations, sizes and addresses. The config loader
(proxy/config_loader.py) builds on it."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import yaml
from yaml.constructor import SafeConstructor
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from proxy.config import ADDRESS_EXPECTED, Address, parse_address
from proxy.values import DURATION_EXPECTED as _DURATION_EXPECTED
from proxy.values import SIZE_EXPECTED as _SIZE_EXPECTED
from proxy.values import Expected as _Expected
from proxy.values import parse_duration, parse_size

_T = TypeVar("_T")

STR_TAG = "tag:yaml.org,2002:str"
NULL_TAG = "tag:yaml.org,2002:null"
BOOL_TAG = "tag:yaml.org,2002:bool"

# RFC 9110 token: header and cookie names that contain anything else could never match.
TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")

Fields = dict[str, Node]


def sub_path(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def is_null(node: Node) -> bool:
    return isinstance(node, ScalarNode) and node.tag == NULL_TAG


class NodeReader:
    """Typed reading of composed YAML nodes. Every check appends to `problems` and carries on
    with a default, so that a single pass reports everything that is wrong, each problem as
    `<source>:<line>: <key path>: <message>`."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._found: list[tuple[int, str]] = []
        self._constructor = SafeConstructor()
        # id(mapping node) -> ids of the key nodes written in it (as opposed to merged in
        # by `<<`); kept because flattening is in place and an aliased node is seen twice.
        self._own_keys: dict[int, frozenset[int]] = {}

    # -- reporting

    def report(self, node: Node, path: str, message: str) -> None:
        where = f"{self.source}:{line_of(node)}"
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        self._found.append((line_of(node), text))

    @property
    def problems(self) -> list[str]:
        # In file order (stable for one line), which is how people fix a config.
        return [text for _, text in sorted(self._found, key=lambda found: found[0])]

    def show(self, node: Node) -> str:
        """The offending value as the YAML author would recognise it."""
        if isinstance(node, MappingNode):
            return "a mapping" if node.value else "an empty mapping"
        if isinstance(node, SequenceNode):
            return "a list" if node.value else "an empty list"
        if node.tag == NULL_TAG:
            return "null"
        if node.tag == STR_TAG:
            return repr(node.value)
        if node.tag == BOOL_TAG:
            return "true" if self._constructor.construct_object(node) else "false"
        return str(node.value)

    # -- structure

    def mapping(
        self,
        node: Node,
        path: str,
        allowed: Sequence[str] | None,
        required: Sequence[str] = (),
        expected: str = "expected a mapping",
    ) -> Fields | None:
        """Key -> value node. `allowed=None` means free-form names (pools, weights, ...).
        A null value for an optional key counts as the key being absent, so an emptied
        section such as `admin:` means "defaults"."""
        if not isinstance(node, MappingNode):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        own = self._own_keys.get(id(node))
        if own is None:
            pairs: list[tuple[Node, Node]] = node.value
            own = self._own_keys[id(node)] = frozenset(id(key) for key, _ in pairs)
            try:
                self._constructor.flatten_mapping(node)  # resolve `<<: *anchor` merge keys
            except yaml.YAMLError as err:
                self.report(node, path, f"bad merge key: {getattr(err, 'problem', err)}")
                return None
        out: Fields = {}
        first_line: dict[str, int] = {}
        inherited: set[str] = set()  # keys whose current value came from a `<<` merge
        pairs = node.value
        for key_node, value_node in pairs:
            if not isinstance(key_node, ScalarNode):
                self.report(key_node, path, f"expected a plain key, got {self.show(key_node)}")
                continue
            # Raw text, so a pool called `2024` or a header called `on` stays as written.
            key = str(key_node.value)
            key_path = sub_path(path, key)
            known = allowed is None or key in allowed
            if key in first_line and (key not in inherited or not known):
                # An unknown key was reported already; a repeat of it is just noise.
                if known:
                    message = f"duplicate key (first on line {first_line[key]})"
                    self.report(key_node, key_path, message)
                continue
            # Merged-in keys come first and a later key overrides them: YAML merge semantics.
            first_line[key] = line_of(key_node)
            inherited.discard(key)
            if id(key_node) not in own:
                inherited.add(key)
            if not known:
                assert allowed is not None
                self.report(key_node, key_path, f"unknown key (allowed: {', '.join(allowed)})")
            elif is_null(value_node) and key not in required:
                out.pop(key, None)
            else:
                out[key] = value_node
        for key in required:
            if key not in first_line:
                self.report(node, sub_path(path, key), "required key missing")
        return out

    def sequence(
        self, node: Node, path: str, expected: str, non_empty: bool = False
    ) -> list[Node] | None:
        if not isinstance(node, SequenceNode) or (non_empty and not node.value):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        items: list[Node] = node.value
        return items

    # -- scalars

    def string(
        self,
        node: Node,
        path: str,
        expected: str = "expected a string",
        pattern: re.Pattern[str] | None = None,
        non_empty: bool = True,
    ) -> str | None:
        # Strict on type: YAML turns unquoted `on`, `010` or `1.10` into non-strings, and
        # silently stringifying them would not give back what the author typed.
        if not isinstance(node, ScalarNode) or node.tag != STR_TAG:
            hint = ""
            if isinstance(node, ScalarNode) and node.tag != NULL_TAG:
                hint = " (put it in quotes if it is meant as text)"
            self.report(node, path, f"{expected}, got {self.show(node)}{hint}")
            return None
        text = str(node.value)
        if (non_empty and not text) or (pattern is not None and not pattern.fullmatch(text)):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        return text

    def converted(
        self, node: Node, path: str, convert: Callable[[object], _T], expected: str
    ) -> _T | None:
        """Run a value helper on a scalar, reporting its complaint with the YAML's text."""
        if not isinstance(node, ScalarNode):
            self.report(node, path, f"{expected}, got {self.show(node)}")
            return None
        try:
            value = self._constructor.construct_object(node)
        except yaml.YAMLError as err:
            self.report(node, path, f"cannot read value: {getattr(err, 'problem', err)}")
            return None
        try:
            return convert(value)
        except _Expected as err:
            self.report(node, path, f"{err.expected}, got {self.show(node)}")
            return None

    def integer(
        self, node: Node, path: str, minimum: int, maximum: int | None = None
    ) -> int | None:
        if maximum is None:
            expected = f"expected an integer >= {minimum}"
        else:
            expected = f"expected an integer in {minimum}..{maximum}"

        def convert(value: object) -> int:
            # bool is an int subclass; `weight: yes` must not mean 1.
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < minimum
                or (maximum is not None and value > maximum)
            ):
                raise _Expected(expected, value)
            return value

        return self.converted(node, path, convert, expected)

    def duration(self, node: Node, path: str) -> float | None:
        seconds = self.converted(node, path, parse_duration, _DURATION_EXPECTED)
        if seconds is not None and seconds <= 0:
            self.report(node, path, f"expected a duration > 0, got {self.show(node)}")
            return None
        return seconds

    def size(self, node: Node, path: str, minimum: int, minimum_text: str) -> int | None:
        size = self.converted(node, path, parse_size, _SIZE_EXPECTED)
        if size is not None and size < minimum:
            self.report(node, path, f"expected a size >= {minimum_text}, got {self.show(node)}")
            return None
        return size

    def address(self, node: Node, path: str) -> Address | None:
        return self.converted(node, path, parse_address, ADDRESS_EXPECTED)

    def pairs(self, node: Node, path: str, what: str) -> tuple[tuple[str, str], ...] | None:
        """A rule's `header`/`cookie` mapping: name -> exact string value."""
        fields_ = self.mapping(node, path, None, expected=f"expected a mapping of {what} -> value")
        if fields_ is None:
            return None
        if not fields_:
            self.report(node, path, f"expected at least one {what} -> value")
            return None
        out: list[tuple[str, str]] = []
        for name, value_node in fields_.items():
            sub = sub_path(path, name)
            ok = True
            if not TOKEN_RE.fullmatch(name):
                self.report(value_node, sub, f"expected a valid {what}, got {name!r}")
                ok = False
            value = self.string(value_node, sub, non_empty=False)
            if ok and value is not None:
                out.append((name, value))
        return tuple(out)

    # -- sections
