"""Plain values as people write them, shared by the config loader, the control API's body
parsers and the state file: durations and sizes ('500ms', '2s', '64KiB'), converted exactly,
and PlainReader, typed field access on decoded JSON whose every error names the key path."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import cast

import orjson

__all__ = [
    "DURATION_EXPECTED",
    "SIZE_EXPECTED",
    "ErrorFactory",
    "Expected",
    "PlainError",
    "PlainReader",
    "kind",
    "parse_duration",
    "parse_size",
    "seconds_text",
    "show",
]


class Expected(ValueError):
    """A value helper's rejection; `expected` lets the loader re-render the bad value as
    the YAML user wrote it instead of as a Python repr."""

    def __init__(self, expected: str, value: object) -> None:
        super().__init__(f"{expected}, got {value!r}")
        self.expected = expected


DURATION_EXPECTED = "expected a duration like '2s' or '500ms'"
SIZE_EXPECTED = "expected a size like '64KiB' or '1MiB'"

# ASCII digits only: `\d` would also accept other scripts' digits.
_NUMBER = r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)"
_DURATION_RE = re.compile(rf"\s*{_NUMBER}\s*(ms|s|m|h)?\s*")
_DURATION_UNITS: dict[str, Fraction] = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_SIZE_RE = re.compile(rf"\s*{_NUMBER}\s*([kmgt]i?b|b)?\s*", re.IGNORECASE)
_SIZE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KIB": 1024,
    "MIB": 1024**2,
    "GIB": 1024**3,
    "TIB": 1024**4,
}


def parse_duration(value: object) -> float:
    """Seconds from a non-negative number or a string like '500ms', '2s', '1.5s', '1m', '1h'
    (a bare number string means seconds). Raises ValueError naming what was expected."""
    # bool is an int subclass, but `connect: yes` is certainly a mistake.
    if isinstance(value, bool):
        raise Expected(DURATION_EXPECTED, value)
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise Expected(DURATION_EXPECTED, value) from None
        if not math.isfinite(seconds) or seconds < 0:
            raise Expected(DURATION_EXPECTED, value)
        return seconds
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is not None:
            number, unit = match.groups()
            # Exact arithmetic so '1500ms' is exactly 1.5 and '7ms' equals 7 / 1000.
            exact = Fraction(number) * _DURATION_UNITS[unit or "s"]
            try:
                return float(exact)
            except OverflowError:
                pass
    raise Expected(DURATION_EXPECTED, value)


def parse_size(value: object) -> int:
    """Bytes from a non-negative integer or a string like '512B', '1KB' (1000), '64KiB',
    '1MiB', '2GiB' (a bare number string means bytes). Raises ValueError naming what was
    expected."""
    if isinstance(value, bool):
        raise Expected(SIZE_EXPECTED, value)
    if isinstance(value, int):
        if value < 0:
            raise Expected(SIZE_EXPECTED, value)
        return value
    if isinstance(value, float):
        if not value.is_integer() or value < 0:
            raise Expected(SIZE_EXPECTED, value)
        return int(value)
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is not None:
            number, unit = match.groups()
            exact = Fraction(number) * _SIZE_UNITS[(unit or "B").upper()]
            if exact.denominator != 1:
                raise Expected("expected a whole number of bytes", value)
            return exact.numerator
    raise Expected(SIZE_EXPECTED, value)


ErrorFactory = Callable[[str], Exception]


def show(value: object) -> str:
    """A value as the JSON the client sent (`"x"`, `[1, 2]`), for error messages."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


def kind(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", type(None): "null"}
    return names.get(type(value), show(value))


def seconds_text(seconds: float) -> str:
    return f"{seconds:g}s"


Step = str | int  # an object key or an array index on the way to a value


class PlainError(ValueError):
    """A PlainReader rejection that keeps its place as steps (keys and indices), for a caller
    that maps them to something better than text, e.g. the YAML loader to a line number."""

    def __init__(self, steps: Sequence[Step], message: str) -> None:
        super().__init__(message)
        self.steps = tuple(steps)
        self.message = message

    def path(self, prefix: str = "") -> str:
        out = prefix
        for step in self.steps:
            out += f"[{step}]" if isinstance(step, int) else (f".{step}" if out else step)
        return out

    def __str__(self) -> str:
        return f"{self.path()}: {self.message}" if self.steps else self.message


class PlainReader:
    """Typed field access on a decoded JSON (or YAML) object; every error names the key path.

    Two ways to report: given an `error` factory, a message "path.to.key: problem" goes to it
    (the API's 400s, the state file's ValueError); without one (`PlainReader.located`) the
    reader raises PlainError carrying the steps. `render` shows a bad value as its source
    spells it (JSON by default)."""

    __slots__ = ("error", "obj", "path", "render", "steps")

    def __init__(
        self,
        obj: object,
        path: str,
        error: ErrorFactory | None,
        *,
        render: Callable[[object], str] = show,
        steps: tuple[Step, ...] = (),
    ) -> None:
        self.path = path
        self.error = error
        self.render = render
        self.steps = steps
        if not isinstance(obj, dict):
            # JSON calls it an object, YAML a mapping; each source is told in its own words.
            what, got = ("an object", kind(obj)) if render is show else ("a mapping", render(obj))
            raise self._problem(None, f"expected {what}, got {got}")
        self.obj: dict[str, object] = obj

    @classmethod
    def located(
        cls, obj: object, steps: Sequence[Step] = (), render: Callable[[object], str] = show
    ) -> PlainReader:
        """A reader whose errors are PlainError(steps, message)."""
        return cls(obj, "", None, render=render, steps=tuple(steps))

    def _problem(self, key: Step | None, message: str) -> Exception:
        if self.error is None:
            return PlainError(self.steps if key is None else (*self.steps, key), message)
        if key is None:
            return self.error(f"{self.path}: {message}" if self.path else message)
        return self.error(f"{self.at(key)}: {message}")

    def at(self, key: Step) -> str:
        if isinstance(key, int):
            return f"{self.path}[{key}]"
        return f"{self.path}.{key}" if self.path else key

    def fail(self, key: Step, message: str) -> Exception:
        return self._problem(key, message)

    def fail_item(self, key: str, index: int, message: str) -> Exception:
        """The problem of item `index` of the array at `key`."""
        if self.error is None:
            return PlainError((*self.steps, key, index), message)
        return self.error(f"{self.at(key)}[{index}]: {message}")

    def only(self, allowed: Sequence[str]) -> None:
        for key in self.obj:
            if key not in allowed:
                raise self.fail(key, f"unknown key (allowed: {', '.join(allowed)})")

    def given(self, key: str) -> bool:
        """The key is present and not null (null means "use the default")."""
        return self.obj.get(key) is not None

    def get(self, key: str) -> object:
        if key not in self.obj:
            raise self.fail(key, "missing")
        return self.obj[key]

    def sub(self, key: str) -> PlainReader:
        return PlainReader(
            self.get(key), self.at(key), self.error, render=self.render, steps=(*self.steps, key)
        )

    def number(self, key: str, low: float, high: float) -> float:
        value = self.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise self.fail(
                key, f"expected a number between {low:g} and {high:g}, got {self.render(value)}"
            )
        return float(value)

    def integer(self, key: str, low: int, high: int) -> int:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            got = self.render(value)
            raise self.fail(key, f"expected an integer between {low} and {high}, got {got}")
        return value

    def count(self, key: str) -> int:
        """An integer >= 0 with no bound but JSON's (counters, versions)."""
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise self.fail(key, f"expected an integer >= 0, got {self.render(value)}")
        return value

    def string(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str) or not value:
            got = self.render(value) if isinstance(value, str) else kind(value)
            raise self.fail(key, f"expected a non-empty string, got {got}")
        return value

    def duration(self, key: str, low: float, high: float) -> float:
        value = self.get(key)
        try:
            seconds = parse_duration(value)
        except ValueError:
            raise self.fail(
                key, f'expected a duration like "30s", "500ms" or seconds, got {self.render(value)}'
            ) from None
        if not low <= seconds <= high:
            raise self.fail(
                key,
                f"expected a duration between {seconds_text(low)} and {seconds_text(high)},"
                f" got {self.render(value)}",
            )
        return seconds

    def array(self, key: str) -> list[object]:
        value = self.get(key)
        if not isinstance(value, list):
            raise self.fail(key, f"expected an array, got {kind(value)}")
        return value

    def strings(self, key: str) -> list[str]:
        """An array of non-empty strings."""
        items = self.array(key)
        for index, item in enumerate(items):
            if not isinstance(item, str) or not item:
                got = self.render(item) if isinstance(item, str) else kind(item)
                raise self.fail_item(key, index, f"expected a non-empty string, got {got}")
        return cast(list[str], items)

    def time(self, key: str) -> float:
        """Any finite number (clock readings in the persisted document)."""
        value = self.get(key)
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.fail(key, f"expected a finite number, got {self.render(value)}")
        return float(value)

    def optional_time(self, key: str) -> float | None:
        return self.time(key) if self.given(key) else None

    def boolean(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise self.fail(key, f"expected true or false, got {self.render(value)}")
        return value

    def text(self, key: str) -> str:
        """Any string, empty included (reasons, details)."""
        value = self.get(key)
        if not isinstance(value, str):
            raise self.fail(key, f"expected a string, got {kind(value)}")
        return value
