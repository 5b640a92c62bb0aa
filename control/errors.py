"""The control plane's refusals: an error with a stable code that maps to an HTTP status, and
the control API's error answer."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar


class CodedError(Exception):
    """A refused change. `code` is a key of the subclass's STATUS map (what the control API
    answers with); str() is for humans."""

    STATUS: ClassVar[Mapping[str, int]] = {}

    def __init__(self, code: str, message: str) -> None:
        if code not in self.STATUS:
            raise ValueError(f"unknown {type(self).__name__} code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        """The HTTP status the control API answers with."""
        return self.STATUS[self.code]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r})"


class ApiError(Exception):
    """An error answer: JSON {"error": ..., "detail": ...} with an HTTP status."""

    def __init__(self, status: int, error: str, detail: object = None) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
