"""One request as the client connection parses it (`Request`), the refusal raised from the
parser's callbacks (`Reject`), and the absolute-form target's split. Compiled with the other
per-request modules: a native class in its own module costs nothing more per request
(benchmarks/instructions.py: 65,309 against 65,322 instructions with it in proxy/http1.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from proxy.shadow import Exchange


class Reject(Exception):
    """A request the proxy refuses before forwarding it (raised from parser callbacks)."""

    def __init__(self, status: int, reason: str, metric: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.metric = metric


class Request:
    """One parsed request head plus the body bytes held while it has no upstream.

    No __slots__: most requests never set most of these, and class-level defaults make a new
    Request cost four attribute stores instead of twenty-odd.
    """

    host = b""
    content_length: bytes | None = None
    te: bytes | None = None
    chunked = False
    connection_tokens: list[bytes] | None = None
    expect_continue = False
    upgrade = False
    upgrade_value = b""
    forwarded_for: bytes | None = None
    via: bytes | None = None
    cookie: bytes | None = None
    request_id: bytes | None = None
    wanted: dict[bytes, bytes] = {}  # shared default, never mutated: on_header assigns a new one
    body: list[bytes] | None = None
    body_size = 0
    trailers: list[bytes] | None = None  # "Name: value\r\n" of the trailer fields forwarded
    mirrors: list[Exchange] | None = None  # copies of this request on their way to shadows
    complete = False
    method = b""
    version = "1.1"
    keep_alive = True
    started = 0.0  # perf_counter at head complete, for the duration histogram

    def __init__(self, begun: float) -> None:
        self.begun = begun  # loop time of the first byte, for the header-read timeout
        self.url = b""
        self.lines: list[bytes] = []  # "Name: value\r\n" of the headers copied through
        self.head_size = 0

    def has_body(self) -> bool:
        return self.chunked or (self.content_length is not None and self.content_length != b"0")

    def hold(self, data: bytes) -> None:
        if self.body is None:
            self.body = [data]
        else:
            self.body.append(data)


_ABSOLUTE_SCHEMES: Final = (b"http", b"https")
# Bytes an authority may not hold (RFC 3986 3.2: no userinfo here, no delimiters or controls).
_NOT_IN_AUTHORITY: Final = frozenset(b'@/?#\\"<>^`{|} \t')


def split_absolute_form(url: bytes) -> tuple[bytes, bytes] | str:
    """An absolute-form request target (RFC 9112 3.2.2) as (authority, origin-form target), or
    the reason it is refused: not http(s), no host, a bad port, or userinfo (which a proxy
    must not pass on, RFC 9110 4.2.4)."""
    scheme, sep, rest = url.partition(b"://")
    if not sep or scheme.lower() not in _ABSOLUTE_SCHEMES:
        return "malformed request target"
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        at = rest.find(delimiter)
        if at != -1 and at < end:
            end = at
    authority = rest[:end]
    target = rest[end:].partition(b"#")[0]  # a fragment is never sent (RFC 9110 7.1)
    if b"@" in authority:
        return "userinfo in the request target"
    if authority[:1] == b"[":
        close = authority.find(b"]")
        host, port = authority[: close + 1], authority[close + 1 :]
        if close == -1 or (port and port[:1] != b":"):
            return "malformed request target"
        port = port[1:]
    else:
        host, _, port = authority.partition(b":")
    if (
        not host
        or any(byte in _NOT_IN_AUTHORITY or byte < 0x20 for byte in host)
        or (port and (not port.isdigit() or int(port) > 65535))
        or (not port and authority.endswith(b":"))
    ):
        return "malformed request target"
    if target[:1] != b"/":
        target = b"/" + target  # "http://host" or "http://host?q": the path is "/"
    return authority, target
