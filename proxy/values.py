"""Value helpers shared by the config loader and the control API's body parsers: durations and
sizes as people write them ('500ms', '2s', '64KiB'), converted exactly."""

from __future__ import annotations

import math
import re
from fractions import Fraction

__all__ = ["DURATION_EXPECTED", "SIZE_EXPECTED", "Expected", "parse_duration", "parse_size"]


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
