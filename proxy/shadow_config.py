"""The shadow ("blind version") settings of a route, and their one parser.

The same settings arrive two ways: from the YAML config (`routes[i].shadows[j]`) and from the
control API as JSON (`PUT /v1/routes/{route}/shadows/{pool}`); both are checked by `parse_shadow`
over plain Python values, so the two cannot drift apart. Errors carry the key steps below the
shadow entry, which the YAML loader turns into a line number and the API into a message.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from proxy.compare import parse_path
from proxy.values import parse_duration, parse_size

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


class ShadowSpecError(ValueError):
    """One problem: `steps` lead from the shadow entry to the bad value (keys and indices)."""

    def __init__(self, steps: Sequence[str | int], message: str) -> None:
        super().__init__(message)
        self.steps = tuple(steps)
        self.message = message

    def path(self, prefix: str) -> str:
        out = prefix
        for step in self.steps:
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
        return out


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    return repr(value)


def _mapping(value: object, steps: list[str | int], allowed: Sequence[str]) -> Mapping[str, object]:
    if not isinstance(value, Mapping):
        raise ShadowSpecError(steps, f"expected a mapping, got {_show(value)}")
    for key in value:
        if key not in allowed:
            raise ShadowSpecError(
                [*steps, str(key)], f"unknown key (allowed: {', '.join(allowed)})"
            )
    return value


def _number(value: object, steps: list[str | int], low: float, high: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ShadowSpecError(steps, f"expected {what}, got {_show(value)}")
    if not low <= value <= high:
        raise ShadowSpecError(steps, f"expected {what}, got {_show(value)}")
    return float(value)


def _integer(value: object, steps: list[str | int], low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ShadowSpecError(steps, f"expected an integer in {low}..{high}, got {_show(value)}")
    return value


def _strings(value: object, steps: list[str | int], what: str) -> list[str]:
    if not isinstance(value, list | tuple):
        raise ShadowSpecError(steps, f"expected a list of {what}, got {_show(value)}")
    out: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ShadowSpecError([*steps, index], f"expected {what[:-1]}, got {_show(item)}")
        out.append(item)
    return out


def _pool_name(value: object, steps: list[str | int], pools: Sequence[str] | None) -> str:
    if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
        raise ShadowSpecError(steps, f"expected a pool name, got {_show(value)}")
    if pools is not None and value not in pools:
        raise ShadowSpecError(steps, f"unknown pool {value!r} (pools: {', '.join(pools)})")
    return value


def _duration(value: object, steps: list[str | int], high: float) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise ShadowSpecError(
            steps, f"expected a duration like '2s' or '500ms', got {_show(value)}"
        ) from None
    if not 0 < seconds <= high:
        raise ShadowSpecError(
            steps, f"expected a duration > 0 and <= {high:g}s, got {_show(value)}"
        )
    return seconds


def _size(value: object, steps: list[str | int], high: int) -> int:
    try:
        size = parse_size(value)
    except ValueError:
        raise ShadowSpecError(
            steps, f"expected a size like '64KiB' or '1MiB', got {_show(value)}"
        ) from None
    if size > high:
        raise ShadowSpecError(
            steps, f"expected a size <= {high // (1024 * 1024)}MiB, got {_show(value)}"
        )
    return size


def _compare(value: object, steps: list[str | int]) -> CompareConfig:
    section = _mapping(value, steps, _COMPARE_KEYS)
    result = CompareConfig()
    max_body = result.max_body
    if section.get("max_body") is not None:
        max_body = _size(section["max_body"], [*steps, "max_body"], MAX_COMPARE_BODY)
    ignore_headers = result.ignore_headers
    if section.get("ignore_headers") is not None:
        names = _strings(section["ignore_headers"], [*steps, "ignore_headers"], "header names")
        for index, name in enumerate(names):
            if not _HEADER_RE.fullmatch(name):
                raise ShadowSpecError(
                    [*steps, "ignore_headers", index], f"expected a header name, got {name!r}"
                )
        ignore_headers = tuple(dict.fromkeys(name.lower() for name in names))
    ignore_json = result.ignore_json
    if section.get("ignore_json") is not None:
        patterns = _strings(section["ignore_json"], [*steps, "ignore_json"], "JSON paths")
        for index, pattern in enumerate(patterns):
            try:
                parse_path(pattern)
            except ValueError as err:
                raise ShadowSpecError([*steps, "ignore_json", index], str(err)) from None
        ignore_json = tuple(patterns)
    samples = result.samples
    if section.get("samples") is not None:
        samples = _integer(section["samples"], [*steps, "samples"], 1, MAX_SAMPLES)
    relative = result.relative_threshold
    if section.get("relative_threshold") is not None:
        relative = _number(
            section["relative_threshold"], [*steps, "relative_threshold"], 0.0, 1e6, "a number >= 0"
        )
    absolute = result.absolute_threshold
    if section.get("absolute_threshold") is not None:
        absolute = _number(
            section["absolute_threshold"], [*steps, "absolute_threshold"], 0.0, 1.0,
            "a fraction in 0..1",
        )  # fmt: skip
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
    URL), in which case the body may omit it. Raises ShadowSpecError."""
    section = _mapping(value, [], _SHADOW_KEYS)
    if section.get("pool") is not None:
        name = _pool_name(section["pool"], ["pool"], pools)
        if pool is not None and name != pool:
            raise ShadowSpecError(["pool"], f"the body names pool {name!r}, the URL {pool!r}")
    elif pool is not None:
        name = _pool_name(pool, ["pool"], pools)
    else:
        raise ShadowSpecError(["pool"], "required key missing")
    result = ShadowConfig(pool=name)
    percent = result.percent
    if section.get("percent") is not None:
        percent = _number(section["percent"], ["percent"], 0.0, 100.0, "a percentage in 0..100")
    methods = result.methods
    if section.get("methods") is not None:
        given = _strings(section["methods"], ["methods"], "methods")
        for index, method in enumerate(given):
            if not _METHOD_RE.fullmatch(method.upper()):
                raise ShadowSpecError(
                    ["methods", index], f"expected an HTTP method, got {method!r}"
                )
        if not given:
            raise ShadowSpecError(["methods"], "expected at least one method")
        methods = tuple(dict.fromkeys(m.upper() for m in given))
    timeout = result.timeout
    if section.get("timeout") is not None:
        timeout = _duration(section["timeout"], ["timeout"], MAX_SHADOW_TIMEOUT)
    max_in_flight = result.max_in_flight
    if section.get("max_in_flight") is not None:
        max_in_flight = _integer(section["max_in_flight"], ["max_in_flight"], 1, MAX_IN_FLIGHT)
    baseline = None
    if section.get("baseline") is not None:
        baseline = _pool_name(section["baseline"], ["baseline"], pools)
        if baseline == name:
            raise ShadowSpecError(["baseline"], "the baseline must be another pool than the shadow")
    compare = result.compare
    if section.get("compare") is not None:
        compare = _compare(section["compare"], ["compare"])
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
