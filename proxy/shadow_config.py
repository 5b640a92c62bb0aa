"""The shadow ("blind version") settings of a route, and their one parser.

The same settings arrive two ways: from the YAML config (`routes[i].shadows[j]`) and from the
control API as JSON (`PUT /v1/routes/{route}/shadows/{pool}`); both are checked by `parse_shadow`
over plain Python values, so the two cannot drift apart. Errors carry the key steps below the
shadow entry, which the YAML loader turns into a line number and the API into a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

from proxy.compare import parse_path
from proxy.values import PlainError, PlainReader, parse_duration, parse_size

__all__ = [
    "DEFAULT_IGNORE_HEADERS",
    "MAX_COMPARE_BODY",
    "CompareConfig",
    "ShadowConfig",
    "ShadowSpecError",
    "parse_shadow",
    "shadow_to_obj",
]

# A mirrored request holds up to three captures (primary, shadow, baseline) of this size while
# in flight, so max_in_flight x 3 x max_body bounds the memory of mirroring.
MAX_COMPARE_BODY: Final = 16 * 1024 * 1024
# In-flight mirrors per shadow: past this the bound no longer protects memory or the upstream.
MAX_IN_FLIGHT: Final = 10_000
# A shadow slower than this is not a shadow but a hung upstream; the slot must come back.
MAX_SHADOW_TIMEOUT: Final = 300.0
# Diff samples kept per shadow: enough to read, bounded so a mismatch storm costs little memory.
MAX_SAMPLES: Final = 10_000
# `Date` differs between any two responses that straddle a second: always noise.
DEFAULT_IGNORE_HEADERS: Final = ("date",)

_METHOD_RE = re.compile(r"[A-Z]+")
_HEADER_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")
_SHADOW_KEYS = ("pool", "percent", "methods", "timeout", "max_in_flight", "baseline", "compare")
_COMPARE_KEYS = (
    "max_body",
    "ignore_headers",
    "ignore_json",
    "samples",
    "relative_threshold",
    "absolute_threshold",
)


@dataclass(frozen=True, slots=True)
class CompareConfig:
    max_body: int = 1024 * 1024  # bytes of each response (and of the request body) captured
    ignore_headers: tuple[str, ...] = DEFAULT_IGNORE_HEADERS  # lower-case names
    ignore_json: tuple[str, ...] = ()  # JSON path patterns, `*` wildcards (proxy.compare)
    samples: int = 100  # mismatching exchanges kept for `pointsman diffs`
    # Noise cancellation (Diffy's rule, proxy.noise.counts_as_mismatch): a path counts only
    # when its candidate diff rate beats the baseline's noise rate by both margins.
    relative_threshold: float = 0.2
    absolute_threshold: float = 0.03


@dataclass(frozen=True, slots=True)
class ShadowConfig:
    pool: str  # the pool that receives mirrored copies (takes no live traffic itself)
    percent: float = 100.0  # share of eligible requests mirrored, by request id
    methods: tuple[str, ...] = ("GET", "HEAD")  # only these are mirrored: they are safe to repeat
    timeout: float = 2.0  # a mirror's whole exchange; past it the mirror is dropped
    max_in_flight: int = 256  # mirrors of this shadow in flight at once; more are dropped
    baseline: str | None = None  # a second copy of the primary's version, for noise
    compare: CompareConfig = field(default_factory=CompareConfig)

    @property
    def sample_buckets(self) -> int:
        """Requests whose id falls in [0, this) of 10,000 buckets are mirrored."""
        return round(self.percent * 100)


# The shadow parser's errors: steps from the shadow entry to the bad value, and a message.
ShadowSpecError = PlainError


def _show(value: object) -> str:
    """A bad value as YAML (and Python) spell it: the parser serves both sources."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _number(r: PlainReader, key: str, low: float, high: float, what: str) -> float:
    value = r.get(key)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise r.fail(key, f"expected {what}, got {_show(value)}")
    return float(value)


def _integer(r: PlainReader, key: str, low: int, high: int) -> int:
    value = r.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise r.fail(key, f"expected an integer in {low}..{high}, got {_show(value)}")
    return value


def _strings(
    r: PlainReader, key: str, item_what: str, pattern: re.Pattern[str] | None
) -> list[str]:
    """A list of non-empty strings, each (upper-cased) matching `pattern` when one is given;
    `item_what` names one item with its article ("a header name")."""
    value = r.get(key)
    if not isinstance(value, list | tuple):
        raise r.fail(key, f"expected a list, each {item_what}, got {_show(value)}")
    out: list[str] = []
    for index, item in enumerate(value):
        if (
            not isinstance(item, str)
            or not item
            or (pattern is not None and not pattern.fullmatch(item.upper()))
        ):
            raise r.fail_item(key, index, f"expected {item_what}, got {_show(item)}")
        out.append(item)
    return out


def _pool_name(r: PlainReader, key: str, value: object, pools: Sequence[str] | None) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise r.fail(key, f"expected a pool name, got {_show(value)}")
    if pools is not None and value not in pools:
        raise r.fail(key, f"unknown pool {value!r} (pools: {', '.join(pools)})")
    return value


def _duration(r: PlainReader, key: str, high: float) -> float:
    value = r.get(key)
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise r.fail(key, f"expected a duration like '2s' or '500ms', got {_show(value)}") from None
    if not 0 < seconds <= high:
        raise r.fail(key, f"expected a duration > 0 and <= {high:g}s, got {_show(value)}")
    return seconds


def _size(r: PlainReader, key: str, high: int) -> int:
    value = r.get(key)
    try:
        size = parse_size(value)
    except ValueError:
        raise r.fail(key, f"expected a size like '64KiB' or '1MiB', got {_show(value)}") from None
    if size > high:
        raise r.fail(key, f"expected a size <= {high // (1024 * 1024)}MiB, got {_show(value)}")
    return size


def _compare(r: PlainReader) -> CompareConfig:
    r.only(_COMPARE_KEYS)
    result = CompareConfig()
    max_body = result.max_body
    if r.given("max_body"):
        max_body = _size(r, "max_body", MAX_COMPARE_BODY)
    ignore_headers = result.ignore_headers
    if r.given("ignore_headers"):
        names = _strings(r, "ignore_headers", "a header name", _HEADER_RE)
        ignore_headers = tuple(dict.fromkeys(name.lower() for name in names))
    ignore_json = result.ignore_json
    if r.given("ignore_json"):
        patterns = _strings(r, "ignore_json", "a JSON path", None)
        for index, pattern in enumerate(patterns):
            try:
                parse_path(pattern)
            except ValueError as err:
                raise r.fail_item("ignore_json", index, str(err)) from None
        ignore_json = tuple(patterns)
    samples = result.samples
    if r.given("samples"):
        samples = _integer(r, "samples", 1, MAX_SAMPLES)
    relative = result.relative_threshold
    if r.given("relative_threshold"):
        relative = _number(r, "relative_threshold", 0.0, 1e6, "a number >= 0")
    absolute = result.absolute_threshold
    if r.given("absolute_threshold"):
        absolute = _number(r, "absolute_threshold", 0.0, 1.0, "a fraction in 0..1")
    return CompareConfig(
        max_body=max_body,
        ignore_headers=ignore_headers,
        ignore_json=ignore_json,
        samples=samples,
        relative_threshold=relative,
        absolute_threshold=absolute,
    )


def parse_shadow(
    value: object, pools: Sequence[str] | None = None, pool: str | None = None
) -> ShadowConfig:
    """A ShadowConfig from plain values (YAML- or JSON-decoded). `pools`: the route's pool
    names, to check `pool` and `baseline`; `pool`: the pool when the caller names it (the API's
    URL), in which case the body may omit it. Raises ShadowSpecError (a PlainError)."""
    r = PlainReader.located(value, render=_show)
    r.only(_SHADOW_KEYS)
    if r.given("pool"):
        name = _pool_name(r, "pool", r.get("pool"), pools)
        if pool is not None and name != pool:
            raise r.fail("pool", f"the body names pool {name!r}, the URL {pool!r}")
    elif pool is not None:
        name = _pool_name(r, "pool", pool, pools)
    else:
        raise r.fail("pool", "required key missing")
    result = ShadowConfig(pool=name)
    percent = result.percent
    if r.given("percent"):
        percent = _number(r, "percent", 0.0, 100.0, "a percentage in 0..100")
    methods = result.methods
    if r.given("methods"):
        given = _strings(r, "methods", "an HTTP method", _METHOD_RE)
        if not given:
            raise r.fail("methods", "expected at least one method")
        methods = tuple(dict.fromkeys(m.upper() for m in given))
    timeout = result.timeout
    if r.given("timeout"):
        timeout = _duration(r, "timeout", MAX_SHADOW_TIMEOUT)
    max_in_flight = result.max_in_flight
    if r.given("max_in_flight"):
        max_in_flight = _integer(r, "max_in_flight", 1, MAX_IN_FLIGHT)
    baseline = None
    if r.given("baseline"):
        baseline = _pool_name(r, "baseline", r.get("baseline"), pools)
        if baseline == name:
            raise r.fail("baseline", "the baseline must be another pool than the shadow")
    compare = result.compare
    if r.given("compare"):
        compare = _compare(r.sub("compare"))
    return ShadowConfig(
        pool=name,
        percent=percent,
        methods=methods,
        timeout=timeout,
        max_in_flight=max_in_flight,
        baseline=baseline,
        compare=compare,
    )


def shadow_to_obj(shadow: ShadowConfig) -> dict[str, object]:
    """Plain JSON values that `parse_shadow` reads back as the same ShadowConfig."""
    compare = shadow.compare
    return {
        "pool": shadow.pool,
        "percent": shadow.percent,
        "methods": list(shadow.methods),
        "timeout": shadow.timeout,
        "max_in_flight": shadow.max_in_flight,
        "baseline": shadow.baseline,
        "compare": {
            "max_body": compare.max_body,
            "ignore_headers": list(compare.ignore_headers),
            "ignore_json": list(compare.ignore_json),
            "samples": compare.samples,
            "relative_threshold": compare.relative_threshold,
            "absolute_threshold": compare.absolute_threshold,
        },
    }
