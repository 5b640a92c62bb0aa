"""A small blocking client for the control API (standard library only), used by the CLI.

Every method makes one HTTP call and returns a `Reply` (a 3-tuple: status code, JSON body,
version from the ETag) whatever the status: an answer from the API, even a 4xx/5xx, is a
reply, not an exception. Only a failure to get any HTTP answer at all (connection refused,
DNS failure, timeout, a peer that is not speaking HTTP) raises `AdminUnreachable`.

Redirects are not followed (they would carry the bearer token elsewhere) and HTTP proxies
from the environment (`http_proxy`, ...) are ignored: the admin API is addressed directly.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any, Final, NamedTuple

__all__ = [
    "DEFAULT_ADMIN_URL",
    "REQUEST_TIMEOUT",
    "ROLLOUT_COMMANDS",
    "AdminClient",
    "AdminUnreachable",
    "Reply",
    "parse_admin_url",
]

DEFAULT_ADMIN_URL: Final = "http://127.0.0.1:8081"
# Seconds for the connect and for each read: a control call answers in milliseconds, so a
# deploy script should hear of a hung admin listener quickly rather than hang with it.
REQUEST_TIMEOUT: Final = 5.0
# The operator commands of a running rollout: POST /v1/routes/ROUTE/rollout/<command>.
ROLLOUT_COMMANDS: Final = ("pause", "resume", "promote", "abort")
# Error bodies are short JSON; a larger answer is read up to this much.
MAX_REPLY_BYTES: Final = 16 * 1024 * 1024


class AdminUnreachable(Exception):
    """No HTTP answer from the admin API at `url`; `reason` is one line for humans."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot reach admin API at {url}: {reason}")
        self.url = url
        self.reason = reason


class Reply(NamedTuple):
    """One answer of the control API.

    `body` is the decoded JSON, or None when the answer was empty or not JSON (for example a
    plain-text 404 from something that is not the control API). `etag` is the version the
    answer carries, without quotes (`"7"` -> `"7"`), or None when there is no ETag.
    """

    status: int
    body: Any
    etag: str | None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def parse_admin_url(url: str) -> str:
    """The admin base URL, normalised (no trailing slash); ValueError when it is not usable."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected a URL like {DEFAULT_ADMIN_URL}, got {url!r}")
    if parts.query or parts.fragment:
        raise ValueError(f"expected a URL without query or fragment, got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ValueError(f"bad port in {url!r}") from None
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def _etag_version(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
    return value


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Hand 3xx answers back as they are instead of following them."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


class AdminClient:
    """Calls of the control API at `base_url` (e.g. http://127.0.0.1:8081).

    `token`, when set, is sent as `Authorization: Bearer <token>` on every call.
    `if_match` on the writes is the version the caller expects the route to be at; it is
    sent as `If-Match: "<version>"` and the API answers 409 when it is stale.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        wait_fleet: float | None = None,
    ) -> None:
        self.base_url = parse_admin_url(base_url)
        self.token = _check_token(token)
        self.timeout = timeout
        # Writes ask for ?wait=fleet: answered once every member of the fleet has the change
        # (at most this many seconds, then 504 naming the members that lag).
        self.wait_fleet = wait_fleet
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())

    def __repr__(self) -> str:
        auth = "token" if self.token else "no token"
        return f"<AdminClient {self.base_url} {auth} timeout={self.timeout}s>"

    # --- the calls --------------------------------------------------------------------------

    def status(self, route: str | None = None) -> Reply:
        """GET /v1/routes, or GET /v1/routes/ROUTE."""
        path = "/v1/routes" if route is None else f"/v1/routes/{_quote(route)}"
        return self._call("GET", path)

    def fleet(self) -> Reply:
        """GET /v1/fleet: the fleet's members and their applied version (404 on one host)."""
        return self._call("GET", "/v1/fleet")

    def counters(self, route: str) -> Reply:
        """GET /v1/routes/ROUTE/counters: requests, 5xx and latency per pool, host-wide."""
        return self._call("GET", f"/v1/routes/{_quote(route)}/counters")

    def shadows(self, route: str) -> Reply:
        """GET /v1/routes/ROUTE/shadows: each shadow's comparison counters."""
        return self._call("GET", f"/v1/routes/{_quote(route)}/shadows")

    def set_weights(
        self, route: str, weights: Mapping[str, int], if_match: int | None = None
    ) -> Reply:
        """PUT /v1/routes/ROUTE/weights with {"weights": {pool: weight, ...}}."""
        body = {"weights": dict(weights)}
        return self._call("PUT", f"/v1/routes/{_quote(route)}/weights", body, if_match)

    def flip(self, route: str, to: str, force: bool = False, if_match: int | None = None) -> Reply:
        """POST /v1/routes/ROUTE/flip with {"to": POOL, "force": bool}."""
        body = {"to": to, "force": force}
        return self._call("POST", f"/v1/routes/{_quote(route)}/flip", body, if_match)

    def rollback(self, route: str, if_match: int | None = None) -> Reply:
        """POST /v1/routes/ROUTE/rollback with {}."""
        return self._call("POST", f"/v1/routes/{_quote(route)}/rollback", {}, if_match)

    def reload(self) -> Reply:
        """POST /v1/reload: read the config file again (400 with its problems, if any)."""
        return self._call("POST", "/v1/reload", {})

    def pool(self, route: str, pool: str) -> Reply:
        """GET /v1/routes/ROUTE/pools/POOL: weight and endpoints (state, requests in flight)."""
        return self._call("GET", f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}")

    def add_endpoints(
        self, route: str, pool: str, endpoints: Sequence[str], if_match: int | None = None
    ) -> Reply:
        """POST /v1/routes/ROUTE/pools/POOL/endpoints: add endpoints, creating the pool (201)."""
        path = f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}/endpoints"
        return self._call("POST", path, {"endpoints": list(endpoints)}, if_match)

    def set_endpoints(
        self, route: str, pool: str, endpoints: Sequence[str], if_match: int | None = None
    ) -> Reply:
        """PUT /v1/routes/ROUTE/pools/POOL/endpoints: replace the pool's endpoints."""
        path = f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}/endpoints"
        return self._call("PUT", path, {"endpoints": list(endpoints)}, if_match)

    def remove_endpoint(
        self, route: str, pool: str, endpoint: str, if_match: int | None = None
    ) -> Reply:
        """DELETE /v1/routes/ROUTE/pools/POOL/endpoints/ENDPOINT."""
        path = f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}/endpoints/{_quote(endpoint)}"
        return self._call("DELETE", path, None, if_match)

    def drain(self, route: str, pool: str, endpoint: str, if_match: int | None = None) -> Reply:
        """POST /v1/routes/ROUTE/pools/POOL/endpoints/ENDPOINT/drain."""
        path = f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}/endpoints/{_quote(endpoint)}"
        return self._call("POST", path + "/drain", {}, if_match)

    def delete_pool(self, route: str, pool: str, if_match: int | None = None) -> Reply:
        """DELETE /v1/routes/ROUTE/pools/POOL (weight 0, in no rule, shadow or rollout)."""
        path = f"/v1/routes/{_quote(route)}/pools/{_quote(pool)}"
        return self._call("DELETE", path, None, if_match)

    def diffs(self, route: str, pool: str, limit: int | None = None) -> Reply:
        """GET /v1/routes/ROUTE/shadows/POOL/diffs[?limit=N]: newest mismatches + summary."""
        path = f"/v1/routes/{_quote(route)}/shadows/{_quote(pool)}/diffs"
        return self._call("GET", path if limit is None else f"{path}?limit={limit}")

    def start_rollout(self, route: str, spec: Mapping[str, Any]) -> Reply:
        """POST /v1/routes/ROUTE/rollout with a rollout spec (keys left out take the server's
        defaults): 201 and the rollout's status object."""
        return self._call("POST", f"/v1/routes/{_quote(route)}/rollout", dict(spec))

    def rollout(self, route: str) -> Reply:
        """GET /v1/routes/ROUTE/rollout: the status of the current rollout, or of the last
        finished one."""
        return self._call("GET", f"/v1/routes/{_quote(route)}/rollout")

    def rollout_command(self, route: str, command: str) -> Reply:
        """POST /v1/routes/ROUTE/rollout/COMMAND (pause, resume, promote or abort), no body."""
        if command not in ROLLOUT_COMMANDS:
            raise ValueError(f"unknown rollout command {command!r} (one of {ROLLOUT_COMMANDS})")
        return self._call("POST", f"/v1/routes/{_quote(route)}/rollout/{command}")

    # --- the transport ----------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        if_match: int | None = None,
    ) -> Reply:
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        if if_match is not None:
            headers["If-Match"] = f'"{if_match}"'
        timeout = self.timeout
        if self.wait_fleet is not None and method != "GET":
            path += f"{'&' if '?' in path else '?'}wait=fleet&wait_timeout={self.wait_fleet:g}"
            timeout += self.wait_fleet  # the server waits that long before it answers
        request = urllib.request.Request(
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            try:
                response = self._opener.open(request, timeout=timeout)
            except urllib.error.HTTPError as err:
                # A 4xx/5xx (or an unfollowed 3xx) is an answer, not a failure to reach.
                response = err
            with response:
                raw = response.read(MAX_REPLY_BYTES)
                status = response.status
                etag = response.headers.get("ETag")
        except urllib.error.URLError as err:
            raise AdminUnreachable(self.base_url, _reason(err.reason)) from None
        except (OSError, http.client.HTTPException) as err:
            # Timeouts, resets, and peers that answer with something other than HTTP.
            raise AdminUnreachable(self.base_url, _reason(err)) from None
        if status is None:  # pragma: no cover - http.client always sets it
            raise AdminUnreachable(self.base_url, "no HTTP status in the answer")
        return Reply(status, _decode(raw), _etag_version(etag))


def _check_token(token: str | None) -> str | None:
    """The token without surrounding whitespace (as the server reads it); None when empty."""
    token = (token or "").strip()
    if not token:
        return None
    if not all("!" <= char <= "~" for char in token):
        raise ValueError("the token must be printable ASCII without spaces")
    return token


def _quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


def _decode(raw: bytes) -> Any:
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:  # includes UnicodeDecodeError
        return None


def _reason(err: object) -> str:
    """One line saying why a call got no answer."""
    if isinstance(err, TimeoutError):
        return "timed out"
    if isinstance(err, http.client.RemoteDisconnected):
        return "connection closed without an answer"
    if isinstance(err, http.client.HTTPException):
        return f"not an HTTP answer ({type(err).__name__})"
    if isinstance(err, OSError) and err.strerror:
        text = err.strerror
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split())
