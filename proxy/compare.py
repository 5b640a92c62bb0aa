"""Primary vs shadow response comparison, and Diffy-style noise cancellation. Pure logic.

No I/O, no asyncio, no clocks: the mirroring code captures both responses (`Captured`, latencies
measured by the caller), calls `compare`, feeds the result to a per-shadow `NoiseModel`, and keeps
redacted samples. Everything here is bounded: the differences reported per comparison, the length
of each rendered value, and the paths a noise model tracks.

Paths name what differed: `status`, `header:<lower-case name>`, and for JSON bodies a JSONPath-like
`$`, `$.a`, `$.a[3].b`, `$["odd key"]` (`$` alone is also the whole-body byte mismatch). `collapse`
turns indices into `[*]` so that paths can be counted and used as metric labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from itertools import compress
from operator import ne
from typing import Literal

import orjson

__all__ = [
    "ABSENT",
    "HOP_BY_HOP",
    "MAX_DIFFERENCES",
    "MAX_RENDERED_CHARS",
    "MAX_TRACKED_PATHS",
    "MORE_PATH",
    "OTHER_PATH",
    "REDACTED",
    "REDACTED_HEADERS",
    "Captured",
    "Comparison",
    "Difference",
    "Part",
    "collapse",
    "compare",
    "parse_path",
    "redact_headers",
    "render_path",
]

Part = Literal["status", "header", "body"]
# One step of a JSON path: a dict key, a list index, or None for the `*` wildcard (None is
# neither a key nor an index, so it cannot be confused with one).
Step = str | int | None

# A sample is read by a person; past this many differences the two responses are simply different.
MAX_DIFFERENCES = 50
# Long enough to recognise a value, short enough that a ring of samples stays small.
MAX_RENDERED_CHARS = 120
# Paths of differences past MAX_DIFFERENCES still feed the noise model, but a body of a million
# distinct keys must not make a million-entry set.
MAX_OVERFLOW_PATHS = 100
# Distinct paths a NoiseModel tracks: they become metric labels, so cardinality is capped.
MAX_TRACKED_PATHS = 200
# Ignore patterns come from config (a handful per shadow); parsed once, not per comparison.
PATTERN_CACHE_SIZE = 256
# Byte mismatches are located chunk by chunk (a C-speed compare each), then byte by byte within.
BYTE_SCAN_CHUNK = 4096
# Bytes of body shown before the first differing byte, so the reader sees where it is.
BYTE_CONTEXT = 16

# The path of the one extra Difference that says how many were left out.
MORE_PATH = "…"
# Where a NoiseModel counts paths beyond MAX_TRACKED_PATHS.
OTHER_PATH = "other"
# The rendered value of a header or JSON key present on one side only.
ABSENT = "(absent)"
REDACTED = "[redacted]"

# Hop-by-hop headers (RFC 9110 7.6.1, plus the non-standard keep-alive and proxy-connection):
# they describe one connection, not the response, so two upstreams may legitimately differ.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
# Credentials: never kept in a diff sample, neither as a header nor as a differing value.
REDACTED_HEADERS = frozenset({"authorization", "cookie", "set-cookie", "proxy-authorization"})

# A key rendered `.key`; anything else is rendered `["..."]` (ASCII only, as JSONPath tools expect).
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# One step of an ignore pattern (see parse_path).
_STEP_RE = re.compile(
    r"""\.(?P<wild>\*)(?=[.\[]|$)
      | \.(?P<name>[^.\[\]"'*]+)
      | \[(?P<index>[0-9]+)\]
      | \[\*\]
      | \[(?P<dq>"(?:[^"\\]|\\.)*")\]
      | \['(?P<sq>[^']*)'\]""",
    re.VERBOSE,
)
# collapse(): a quoted key is skipped whole (it may contain "[3]"); an index becomes [*].
_COLLAPSE_RE = re.compile(r'("(?:[^"\\]|\\.)*")|\[[0-9]+\]')

# Stands for "no such key" on one side of a JSON dict (None is a JSON value, so it cannot).
_MISSING = object()


@dataclass(frozen=True, slots=True)
class Captured:
    """One response as captured for comparison."""

    status: int
    headers: tuple[tuple[str, str], ...]  # names as received, in order
    body: bytes  # at most the capture limit
    body_truncated: bool  # the response was longer than `body`
    body_size: int  # the full size seen
    latency: float  # seconds, measured by the caller


@dataclass(frozen=True, slots=True)
class Difference:
    """One thing that differs; values rendered short (MAX_RENDERED_CHARS) and redacted."""

    part: Part
    path: str
    primary: str
    candidate: str


@dataclass(frozen=True, slots=True)
class Comparison:
    """The differences of one pair of responses, at most MAX_DIFFERENCES (+ one MORE_PATH)."""

    differences: tuple[Difference, ...]
    latency_delta: float  # candidate - primary, seconds
    # Collapsed paths of differences left out past MAX_DIFFERENCES (at most MAX_OVERFLOW_PATHS),
    # so that a real change beyond the first screenful of noise still reaches the noise model.
    overflow_paths: frozenset[str] = frozenset()
    # `paths`, once computed: the noise model and the counting each read it.
    _paths: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def matched(self) -> bool:
        return not self.differences

    @property
    def paths(self) -> frozenset[str]:
        """The collapsed paths that differed (what a NoiseModel counts)."""
        paths = self._paths
        if paths is None:
            shown = {collapse(d.path) for d in self.differences if d.path != MORE_PATH}
            paths = frozenset(shown) | self.overflow_paths
            object.__setattr__(self, "_paths", paths)
        return paths


def compare(
    primary: Captured,
    candidate: Captured,
    ignore_headers: frozenset[str],
    ignore_json: Sequence[str],
) -> Comparison:
    """Compare status, headers and body of two responses to the same request.

    `ignore_headers` are header names (matched case-insensitively); `ignore_json` are path
    patterns (see `parse_path`; a malformed one raises ValueError) whose differences, at the path
    or anywhere under it, are dropped.
    """
    out = _Differences()
    if primary.status != candidate.status:
        out.add("status", "status", str(primary.status), str(candidate.status))
    _compare_headers(primary, candidate, ignore_headers, out)
    _compare_body(primary, candidate, tuple(parse_path(p) for p in ignore_json), out)
    return out.comparison(candidate.latency - primary.latency)


class _Differences:
    """Collects differences in order; past the cap it only counts them and notes their paths."""

    __slots__ = ("more", "overflow", "shown")

    def __init__(self) -> None:
        self.shown: list[Difference] = []
        self.more = 0
        self.overflow: set[str] = set()

    @property
    def full(self) -> bool:
        return len(self.shown) >= MAX_DIFFERENCES

    def add(self, part: Part, path: str, primary: str, candidate: str) -> None:
        if self.full:
            self.skip(path)
        else:
            self.shown.append(Difference(part, path, _short(primary), _short(candidate)))

    def add_json(self, path: str, primary: object, candidate: object) -> None:
        # Values are rendered only for differences that are kept.
        if self.full:
            self.skip(path)
        else:
            self.add("body", path, _json_shown(primary), _json_shown(candidate))

    def skip(self, path: str) -> None:
        self.more += 1
        if len(self.overflow) < MAX_OVERFLOW_PATHS:
            self.overflow.add(collapse(path))

    def comparison(self, latency_delta: float) -> Comparison:
        differences = self.shown
        if self.more:
            more = f"{self.more} more differences"
            differences = [*differences, Difference("body", MORE_PATH, more, more)]
        return Comparison(tuple(differences), latency_delta, frozenset(self.overflow))


def _short(text: str) -> str:
    if len(text) <= MAX_RENDERED_CHARS:
        return text
    return text[: MAX_RENDERED_CHARS - 1] + "…"


# --- headers -------------------------------------------------------------------------------------


def _compare_headers(
    primary: Captured, candidate: Captured, ignore: frozenset[str], out: _Differences
) -> None:
    excluded = set(HOP_BY_HOP)
    excluded.update(name.lower() for name in ignore)  # lower-cased again: cheap, and forgiving
    # Headers named in Connection are hop-by-hop for that message; excluded on both sides, since
    # a header one upstream sends hop-by-hop says nothing about the response.
    excluded.update(_connection_names(primary.headers))
    excluded.update(_connection_names(candidate.headers))
    # Content-Length is the body's size: the body part judges it (a JSON body whose length
    # changes only in an ignored field must not differ here).
    excluded.add("content-length")
    mine = _header_values(primary.headers, excluded)
    theirs = _header_values(candidate.headers, excluded)
    for name in sorted(mine.keys() | theirs.keys()):
        a = mine.get(name)
        b = theirs.get(name)
        if a != b:
            out.add("header", "header:" + name, _header_shown(name, a), _header_shown(name, b))


def _connection_names(headers: Iterable[tuple[str, str]]) -> set[str]:
    names: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            names.update(t.strip().lower() for t in value.split(",") if t.strip())
    return names


def _header_values(headers: Iterable[tuple[str, str]], excluded: set[str]) -> dict[str, str]:
    """Lower-case name -> its values in order, joined by ", " (RFC 9110 5.3 field combination)."""
    values: dict[str, list[str]] = {}
    for name, value in headers:
        key = name.lower()
        if key not in excluded:
            # Surrounding whitespace is not part of a field value (RFC 9110 5.5).
            values.setdefault(key, []).append(value.strip(" \t"))
    return {key: ", ".join(parts) for key, parts in values.items()}


def _header_shown(name: str, value: str | None) -> str:
    if value is None:
        return ABSENT
    return REDACTED if name in REDACTED_HEADERS else value


# --- body ----------------------------------------------------------------------------------------


def _compare_body(
    primary: Captured,
    candidate: Captured,
    ignore: tuple[tuple[Step, ...], ...],
    out: _Differences,
) -> None:
    if primary.body_truncated or candidate.body_truncated:
        # A prefix cannot be parsed as JSON, so ignore paths cannot be applied to it: comparing
        # prefix bytes would report every ignored timestamp. Sizes are all that can be judged.
        if (
            primary.body_truncated != candidate.body_truncated
            or primary.body_size != candidate.body_size
        ):
            out.add("body", "$", _size_shown(primary), _size_shown(candidate))
        return
    if primary.body == candidate.body:
        return  # the common case: no parsing at all
    a = _parse_json(primary.body)
    b = _parse_json(candidate.body)
    if a is not _MISSING and b is not _MISSING:
        # Note: orjson reads integers beyond 64 bits as floats, so two such integers that differ
        # past float precision compare equal. Rare in APIs; the price of a fast parser.
        _diff_json(a, b, ignore, out)
        return
    offset = _first_difference(primary.body, candidate.body)
    out.add(
        "body",
        "$",
        _bytes_shown(primary.body_size, primary.body, offset),
        _bytes_shown(candidate.body_size, candidate.body, offset),
    )


def _size_shown(response: Captured) -> str:
    if response.body_truncated:
        return f"{response.body_size} bytes (captured {len(response.body)})"
    return f"{response.body_size} bytes"


def _parse_json(body: bytes) -> object:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _MISSING


def _first_difference(a: bytes, b: bytes) -> int:
    """Offset of the first differing byte (or the shorter length if one is a prefix)."""
    end = min(len(a), len(b))
    start = 0
    while start < end:
        stop = min(start + BYTE_SCAN_CHUNK, end)
        if a[start:stop] != b[start:stop]:
            for i in range(start, stop):
                if a[i] != b[i]:
                    return i
        start = stop
    return end


def _bytes_shown(size: int, body: bytes, offset: int) -> str:
    start = max(0, offset - BYTE_CONTEXT)
    excerpt = body[start : start + MAX_RENDERED_CHARS].decode("utf-8", "replace")
    return (
        f"{size} bytes, differ at byte {offset}; from byte {start}: "
        + orjson.dumps(excerpt).decode()
    )


# --- JSON structural diff ------------------------------------------------------------------------


def _diff_json(
    primary: object,
    candidate: object,
    ignore: tuple[tuple[Step, ...], ...],
    out: _Differences,
) -> None:
    """Walk both documents together, in document order, with an explicit stack (orjson accepts
    nesting deeper than Python's recursion limit). Only children whose serialisations differ are
    visited, so equal subtrees are skipped at C speed. A difference ends the descent at its node,
    so the subtrees rendered are disjoint: rendering costs at most the size of the documents."""
    if any(not pattern for pattern in ignore):
        return  # "$" ignores the whole document
    for pattern in ignore:
        _prune(primary, pattern)
        _prune(candidate, pattern)
    if _canonical_equal(primary, candidate):
        return  # only formatting or key order differed, or only ignored paths
    steps: dict[str, str] = {}  # rendered keys: the same few keys recur in every list element
    stack: list[tuple[object, object, str]] = [(primary, candidate, "$")]
    while stack:
        a, b, path = stack.pop()
        if a is _MISSING or b is _MISSING:
            out.add_json(path, a, b)
        elif isinstance(a, dict) and isinstance(b, dict):
            keys = list(a)
            keys.extend(key for key in b if key not in a)
            same = _equal_values(a, b)
            for key in reversed(keys):
                if key in same:
                    continue
                step = steps.get(key)
                if step is None:
                    step = steps[key] = _render_key(key)
                stack.append((a.get(key, _MISSING), b.get(key, _MISSING), path + step))
        elif isinstance(a, list) and isinstance(b, list):
            if len(a) != len(b):
                out.add("body", path, f"length {len(a)}", f"length {len(b)}")
            for index in reversed(_differing_indices(a, b)):
                stack.append((a[index], b[index], f"{path}[{index}]"))
        elif type(a) is not type(b) or a != b:
            # Type and value: 1 and 1.0 (or true and 1) are equal in Python but serialise
            # differently, and a client parsing the JSON may well tell them apart. Reported.
            out.add_json(path, a, b)


# Equal JSON values, and only those, have equal sorted-key serialisations: unlike Python's ==,
# this tells 1, 1.0 and true apart.
_canonical = partial(orjson.dumps, option=orjson.OPT_SORT_KEYS)


def _canonical_equal(a: object, b: object) -> bool:
    try:
        return bool(_canonical(a) == _canonical(b))
    except orjson.JSONEncodeError:
        return False  # nested deeper than orjson serialises: let the walk go down


def _equal_values(a: dict[str, object], b: dict[str, object]) -> set[str]:
    """The keys of both dicts whose values are equal (serialised and compared in C)."""
    try:
        mine = dict(zip(a, map(_canonical, a.values()), strict=True))
        theirs = dict(zip(b, map(_canonical, b.values()), strict=True))
    except orjson.JSONEncodeError:
        return set()
    return {key for key, value in mine.items() if theirs.get(key) == value}


def _differing_indices(a: list[object], b: list[object]) -> Sequence[int]:
    """Indices of the common prefix whose elements differ, found without a Python-level loop."""
    common = min(len(a), len(b))
    try:
        unequal = map(ne, map(_canonical, a[:common]), map(_canonical, b[:common]))
        return list(compress(range(common), unequal))
    except orjson.JSONEncodeError:
        return range(common)


def _prune(document: object, pattern: tuple[Step, ...]) -> None:
    """Remove from a parsed document, in place, what a (non-empty) ignore pattern matches: keys
    are deleted (so absent on both sides is no difference); list elements become null rather
    than deleted, so that indices and lengths still compare. Pruning both documents before the
    walk costs a visit of the pattern's matches only, and leaves the walk free to skip equal
    subtrees whole. (A difference reported above an ignored path shows its value pruned.)"""
    nodes = [document]
    for step in pattern[:-1]:
        following: list[object] = []
        for node in nodes:
            if isinstance(node, dict):
                if step is None:
                    following.extend(node.values())
                elif isinstance(step, str) and step in node:
                    following.append(node[step])
            elif isinstance(node, list):
                if step is None:
                    following.extend(node)
                elif isinstance(step, int) and step < len(node):
                    following.append(node[step])
        nodes = following
    last = pattern[-1]
    for node in nodes:
        if isinstance(node, dict):
            if last is None:
                node.clear()
            elif isinstance(last, str):
                node.pop(last, None)
        elif isinstance(node, list):
            if last is None:
                node[:] = [None] * len(node)
            elif isinstance(last, int) and last < len(node):
                node[last] = None


def _json_shown(value: object) -> str:
    if value is _MISSING:
        return ABSENT
    return _short(orjson.dumps(value).decode())


def _render_key(key: str) -> str:
    if _IDENTIFIER_RE.fullmatch(key):
        return "." + key
    return "[" + orjson.dumps(key).decode() + "]"


def render_path(steps: Iterable[str | int]) -> str:
    """`$`-rooted path of keys (str) and indices (int), as `compare` reports it."""
    return "$" + "".join(f"[{s}]" if isinstance(s, int) else _render_key(s) for s in steps)


@lru_cache(maxsize=PATTERN_CACHE_SIZE)
def parse_path(pattern: str) -> tuple[Step, ...]:
    """Parse an ignore pattern into steps (None for `*`); raise ValueError if malformed.

    Grammar: `$` then any of `.name`, `.*`, `[3]`, `[*]`, `["any key"]` (JSON string) or
    `['any key']`. `*` matches any one key or index. Every path `compare` reports parses back to
    itself, so a reported path can be pasted into `ignore_json`.
    """
    if not pattern.startswith("$"):
        raise ValueError(f"JSON path {pattern!r} must start with '$'")
    steps: list[Step] = []
    position = 1
    while position < len(pattern):
        match = _STEP_RE.match(pattern, position)
        if match is None:
            raise ValueError(f"JSON path {pattern!r}: cannot read from {pattern[position:]!r}")
        if match["name"] is not None:
            steps.append(match["name"])
        elif match["index"] is not None:
            steps.append(int(match["index"]))
        elif match["dq"] is not None:
            try:
                steps.append(str(orjson.loads(match["dq"])))
            except orjson.JSONDecodeError:
                raise ValueError(f"JSON path {pattern!r}: bad quoted key {match['dq']}") from None
        elif match["sq"] is not None:
            steps.append(match["sq"])
        else:
            steps.append(None)  # `.*` or `[*]`
        position = match.end()
    return tuple(steps)


def collapse(path: str) -> str:
    """Array indices replaced by `[*]`, for counting: `$.items[3].price` -> `$.items[*].price`."""
    if "[" not in path:
        return path  # no index, no quoted key: headers, status, most JSON paths
    return _COLLAPSE_RE.sub(lambda m: m[1] or "[*]", path)


# --- redaction -----------------------------------------------------------------------------------


def redact_headers(headers: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    """The headers with credential values (REDACTED_HEADERS, any case) replaced by REDACTED."""
    return tuple(
        (name, REDACTED if name.lower() in REDACTED_HEADERS else value) for name, value in headers
    )
