"""The control API's contract: its OpenAPI 3.1 document, built here from the handlers' real
behaviour (control/api.py) and kept beside this module as control/openapi.json, which the
admin listener serves at `GET /v1/openapi.json`.

`python -m control.openapi` writes the file again after a change here; tests/test_openapi.py
checks that the file is this module's output, that it is a valid OpenAPI 3.1 document, and
(with schemathesis, against a live admin API) that every answer conforms to it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Final

from control.rollout import RolloutError
from control.state import StateError

Schema = dict[str, Any]

# Where the document lives (installed as package data with the control package).
DOCUMENT_PATH: Final = Path(__file__).with_name("openapi.json")

# The error codes `detail.code` takes besides the state machines' (StateError, RolloutError):
# the plane's, the fleet's and the API's own. "unchanged" never reaches a client (a change
# already in force answers 200).
API_CODES: Final = (
    "rollout_in_progress",
    "version_conflict",
    "config_differs",
    "state_not_saved",
    "store_unreachable",
    "store_refused",
    "bad_query",
    "not_a_fleet",
    "bad_config",
    "fleet_wait_timeout",
)


def error_codes() -> list[str]:
    codes = {*StateError.STATUS, *RolloutError.STATUS, *API_CODES} - {"unchanged"}
    return sorted(codes)


def ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


def obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = ()) -> Schema:
    """A closed object whose properties are all required except `optional`."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": False,
    }


def map_of(values: Schema) -> Schema:
    return {"type": "object", "additionalProperties": values}


STRING: Final[Schema] = {"type": "string"}
STRINGS: Final[Schema] = {"type": "array", "items": {"type": "string"}}
NUMBER: Final[Schema] = {"type": "number"}
COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
BOOLEAN: Final[Schema] = {"type": "boolean"}
NUMBER_OR_NULL: Final[Schema] = {"type": ["number", "null"]}
INTEGER_OR_NULL: Final[Schema] = {"type": ["integer", "null"]}
STRING_OR_NULL: Final[Schema] = {"type": ["string", "null"]}
BOOLEAN_OR_NULL: Final[Schema] = {"type": ["boolean", "null"]}
# Durations in request bodies: seconds, or a string like "30s", "500ms", "1m", "1h".
DURATION: Final[Schema] = {
    "oneOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^\s*([0-9]+(\.[0-9]*)?|\.[0-9]+)\s*(ms|s|m|h)?\s*$"},
    ],
    "description": 'Seconds, or a duration like "30s", "500ms", "1m", "1h".',
}
# An optional key of a rollout or shadow body: null means "the default", like leaving it out.
OR_DEFAULT: Final = nullable


def schemas() -> dict[str, Schema]:
    endpoint = obj(
        {
            "address": {"type": "string", "description": "host:port (IPv6 hosts in brackets)"},
            "state": {"enum": ["up", "down", "draining"]},
            "healthy": {
                "type": ["boolean", "null"],
                "description": "null while draining",
            },
            "in_flight": COUNT,
            "name": {
                "type": "string",
                "description": "For an address of a DNS endpoint: the name:port it came from.",
            },
        },
        optional=("name",),
    )
    pool = obj({"weight": COUNT, "endpoints": {"type": "array", "items": ref("Endpoint")}})
    dns_entry = obj(
        {
            "name": {"type": "string", "description": "name:port as in the state"},
            "addresses": STRINGS,
            "resolutions": COUNT,
            "failures": COUNT,
            "last_error": STRING_OR_NULL,
        }
    )
    weights = map_of(COUNT)
    route = obj(
        {
            "name": STRING,
            "version": COUNT,
            "weights": {**weights, "description": "Every pool's weight, in config order."},
            "live": {
                "type": ["string", "null"],
                "description": "The pool with all the traffic, when exactly one has weight.",
            },
            "previous": nullable(
                obj({"weights": weights, "live": STRING_OR_NULL}),
            ),
            "flips": COUNT,
            "rollbacks": COUNT,
            "changed_at": {"type": "number", "description": "Unix time of the last change."},
            "pools": map_of(ref("Pool")),
            "shadows": {**STRINGS, "description": "Pools that get mirrored copies."},
        }
    )
    pool_view = obj(
        {
            "route": STRING,
            "pool": STRING,
            "weight": COUNT,
            "endpoints": {"type": "array", "items": ref("Endpoint")},
            "dns": {
                "type": "array",
                "items": ref("DnsEndpoint"),
                "description": "GET only: the pool's DNS endpoints and their resolutions.",
            },
        },
        optional=("dns",),
    )
    compare_settings = obj(
        {
            "max_body": COUNT,
            "ignore_headers": STRINGS,
            "ignore_json": STRINGS,
            "samples": {"type": "integer", "minimum": 1, "maximum": 10_000},
            "relative_threshold": {"type": "number", "minimum": 0},
            "absolute_threshold": {"type": "number", "minimum": 0, "maximum": 1},
        }
    )
    shadow_settings = obj(
        {
            "pool": STRING,
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "methods": STRINGS,
            "timeout": {"type": "number", "exclusiveMinimum": 0, "description": "seconds"},
            "max_in_flight": {"type": "integer", "minimum": 1, "maximum": 10_000},
            "baseline": STRING_OR_NULL,
            "compare": ref("CompareSettings"),
        }
    )
    shadow_path = obj(
        {
            "path": STRING,
            "diff_rate": NUMBER,
            "noise_rate": NUMBER,
            "diffs": COUNT,
            "noise_diffs": COUNT,
            "counts": {"type": "boolean", "description": "A mismatch that beats the noise."},
        }
    )
    shadow = obj(
        {
            "route": STRING,
            "pool": STRING,
            "version": COUNT,
            "settings": ref("ShadowSettings"),
            "endpoints": STRINGS,
            "in_flight": COUNT,
            "mirrored": COUNT,
            "dropped": {**map_of(COUNT), "description": "Mirrors dropped, by reason."},
            "compared": COUNT,
            "matched": COUNT,
            "mismatched": COUNT,
            "noise": COUNT,
            "mismatch_rate": NUMBER,
            "mismatched_parts": map_of(COUNT),
            "samples": COUNT,
            "baseline_samples": COUNT,
            "paths": {"type": "array", "items": shadow_path},
            "diffs_kept": COUNT,
        }
    )
    difference = obj(
        {
            "part": {"enum": ["status", "header", "body"]},
            "path": STRING,
            "primary": STRING,
            "shadow": STRING,
            "noise": BOOLEAN,
        }
    )
    diff_sample = obj(
        {
            "at": NUMBER,
            "request_id": STRING,
            "method": STRING,
            "target": STRING,
            "host": STRING,
            "request_headers": {
                "type": "array",
                "items": {"type": "array", "items": STRING, "minItems": 2, "maxItems": 2},
            },
            "request_body": STRING_OR_NULL,
            "request_body_truncated": BOOLEAN,
            "endpoint": STRING,
            "primary_status": {"type": "integer"},
            "shadow_status": {"type": "integer"},
            "primary_ms": NUMBER,
            "shadow_ms": NUMBER,
            "differences": {"type": "array", "items": difference},
        }
    )
    diffs = obj(
        {
            "route": STRING,
            "pool": STRING,
            "kept": COUNT,
            "summary": ref("Shadow"),
            "diffs": {"type": "array", "items": ref("DiffSample"), "description": "Newest first."},
        }
    )
    pool_counters = obj(
        {"requests": COUNT, "errors": COUNT, "buckets": {"type": "array", "items": COUNT}}
    )
    mismatch_counters = obj({"compared": COUNT, "mismatched": COUNT})
    counters = obj(
        {
            "bounds": {"type": "array", "items": NUMBER},
            "pools": map_of(pool_counters),
            "mismatch": nullable(mismatch_counters),
        }
    )
    member = obj(
        {
            "id": STRING,
            "admin": STRING,
            "version": COUNT,
            "lag": COUNT,
            "workers": INTEGER_OR_NULL,
            "error": STRING_OR_NULL,
        }
    )
    fleet = obj(
        {
            "fleet": STRING,
            "prefix": STRING,
            "version": COUNT,
            "members": {"type": "array", "items": ref("Member")},
        }
    )
    reload = obj(
        {
            "config": STRING,
            "version": COUNT,
            "warnings": STRINGS,
            "restart_needed": STRINGS,
            "seconds": NUMBER,
        }
    )
    return {
        "Error": error_schema(),
        "Endpoint": endpoint,
        "Pool": pool,
        "DnsEndpoint": dns_entry,
        "Route": route,
        "Routes": obj({"version": COUNT, "routes": {"type": "array", "items": ref("Route")}}),
        "PoolView": pool_view,
        "CompareSettings": compare_settings,
        "ShadowSettings": shadow_settings,
        "Shadow": shadow,
        "Shadows": obj({"route": STRING, "shadows": {"type": "array", "items": ref("Shadow")}}),
        "DiffSample": diff_sample,
        "Diffs": diffs,
        "Counters": counters,
        "Member": member,
        "Fleet": fleet,
        "Reload": reload,
        "Health": health_schema(),
        **rollout_schemas(),
        **request_schemas(),
    }


def error_schema() -> Schema:
    detail = obj(
        {
            "code": {"enum": error_codes(), "description": "Why a change was refused."},
            "current_version": COUNT,
            "routes": STRINGS,
            "pools": STRINGS,
            "shadows": STRINGS,
            "commands": STRINGS,
            "problems": {**STRINGS, "description": "bad_config: each problem of the file."},
            "lagging": {"type": "array", "items": ref("Member")},
            "pool": STRING,
            "path": STRING,
            "got": STRING,
            "limit": COUNT,
        },
        optional=(
            "code",
            "current_version",
            "routes",
            "pools",
            "shadows",
            "commands",
            "problems",
            "lagging",
            "pool",
            "path",
            "got",
            "limit",
        ),
    )
    return {
        **obj(
            {
                "error": {"type": "string", "description": "What went wrong, for people."},
                "detail": {
                    "anyOf": [detail, {"type": "string"}, {"type": "null"}],
                    "description": "null, a string (why the body is not JSON), or an object"
                    " whose `code` says why a change was refused.",
                },
            }
        ),
        "description": "Every error of the admin listener: never a traceback.",
    }


def health_schema() -> Schema:
    store = obj(
        {
            "kind": {"const": "etcd"},
            "reachable": BOOLEAN,
            "seconds_since_sync": NUMBER_OR_NULL,
            "error": STRING_OR_NULL,
        }
    )
    return obj(
        {
            "status": {"enum": ["ok", "draining"]},
            "version": COUNT,
            "store": {**store, "description": "In a fleet (state.store: etcd) only."},
        },
        optional=("store",),
    )


def rollout_schemas() -> dict[str, Schema]:
    window = obj(
        {
            "requests": COUNT,
            "errors": COUNT,
            "error_rate": NUMBER_OR_NULL,
            "p99_ms": NUMBER_OR_NULL,
        }
    )
    check = obj(
        {
            "name": STRING,
            "value": NUMBER_OR_NULL,
            "threshold": NUMBER_OR_NULL,
            "passed": BOOLEAN_OR_NULL,
            "note": STRING,
        }
    )
    analysis = obj(
        {
            "at": NUMBER_OR_NULL,
            "outcome": {"enum": ["pass", "fail", "inconclusive"]},
            "summary": STRING,
            "checks": {"type": "array", "items": check},
            "candidate": window,
            "stable": window,
            "mismatch": nullable(
                obj({"compared": COUNT, "mismatched": COUNT, "rate": NUMBER_OR_NULL})
            ),
        }
    )
    event = obj(
        {
            "event": STRING,
            "step": {"type": "integer", "minimum": -1},
            "weights": map_of(COUNT),
            "at": NUMBER,
            "detail": STRING,
        }
    )
    spec = obj(
        {
            "candidate": STRING,
            "stable": STRING,
            "steps": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 100}},
            "step_interval": NUMBER,
            "analysis": obj(
                {
                    "interval": NUMBER,
                    "min_requests": {"type": "integer", "minimum": 1},
                    "max_error_rate": NUMBER,
                    "max_error_rate_vs_stable": NUMBER,
                    "max_p99_ms": NUMBER_OR_NULL,
                    "max_p99_vs_stable": NUMBER_OR_NULL,
                    "max_mismatch_rate": NUMBER_OR_NULL,
                    "failure_limit": {"type": "integer", "minimum": 1},
                }
            ),
            "on_inconclusive": {"enum": ["pause", "wait"]},
            "max_weight": {"type": "integer", "minimum": 1, "maximum": 100},
            "webhooks": nullable(
                obj(
                    {
                        "url": STRING_OR_NULL,
                        "confirm_url": STRING_OR_NULL,
                        "timeout": NUMBER,
                        "retries": COUNT,
                    }
                )
            ),
        }
    )
    status = obj(
        {
            "phase": {
                "enum": ["running", "paused", "awaiting_confirm", "promoted", "failed", "aborted"]
            },
            "candidate": STRING,
            "stable": STRING,
            "step": {"type": "integer", "minimum": -1, "description": "-1 before the first step"},
            "percent": INTEGER_OR_NULL,
            "steps": {"type": "array", "items": {"type": "integer"}},
            "weights": map_of(COUNT),
            "time_in_step": NUMBER,
            "step_interval": NUMBER,
            "next_analysis_in": NUMBER_OR_NULL,
            "window_seconds": NUMBER,
            "consecutive_failures": COUNT,
            "failure_limit": {"type": "integer", "minimum": 1},
            "reason": STRING_OR_NULL,
            "last_analysis": nullable(ref("Analysis")),
            "spec": ref("RolloutSpec"),
            "started_at": NUMBER,
            "updated_at": NUMBER,
            "history": {"type": "array", "items": ref("RolloutEvent")},
        }
    )
    return {
        "Analysis": analysis,
        "RolloutEvent": event,
        "RolloutSpec": spec,
        "Rollout": status,
    }


def request_schemas() -> dict[str, Schema]:
    """Request bodies: what the handlers accept. Unknown keys are refused (400)."""
    pool_name = {"type": "string", "pattern": r"^[A-Za-z0-9_.-]+$"}
    percent_step = {"type": "integer", "minimum": 1, "maximum": 100}
    hook_url = {"type": "string", "pattern": "^https?://", "maxLength": 2048}
    analysis = {
        "type": "object",
        "properties": {
            "interval": OR_DEFAULT(DURATION),
            "min_requests": OR_DEFAULT({"type": "integer", "minimum": 1, "maximum": 100_000_000}),
            "max_error_rate": OR_DEFAULT({"type": "number", "minimum": 0, "maximum": 1}),
            "max_error_rate_vs_stable": OR_DEFAULT(
                {"type": "number", "minimum": 1, "maximum": 1000}
            ),
            "max_p99_ms": OR_DEFAULT({"type": "number", "minimum": 1, "maximum": 3_600_000}),
            "max_p99_vs_stable": OR_DEFAULT({"type": "number", "minimum": 1, "maximum": 1000}),
            "max_mismatch_rate": OR_DEFAULT({"type": "number", "minimum": 0, "maximum": 1}),
            "failure_limit": OR_DEFAULT({"type": "integer", "minimum": 1, "maximum": 100}),
        },
        "additionalProperties": False,
    }
    webhooks = {
        "type": "object",
        "properties": {
            "url": OR_DEFAULT(hook_url),
            "confirm_url": OR_DEFAULT(hook_url),
            "timeout": OR_DEFAULT(DURATION),
            "retries": OR_DEFAULT({"type": "integer", "minimum": 0, "maximum": 10}),
        },
        "additionalProperties": False,
        "description": "Where events are posted (url) and who approves the last step"
        " (confirm_url); at least one of the two.",
    }
    rollout = {
        "type": "object",
        "properties": {
            "candidate": {"type": "string", "minLength": 1},
            "stable": {"type": "string", "minLength": 1},
            "steps": OR_DEFAULT(
                {"type": "array", "items": percent_step, "minItems": 1, "maxItems": 100}
            ),
            "step_interval": OR_DEFAULT(DURATION),
            "analysis": OR_DEFAULT(analysis),
            "on_inconclusive": OR_DEFAULT({"enum": ["pause", "wait"]}),
            "max_weight": OR_DEFAULT(percent_step),
            "webhooks": OR_DEFAULT(webhooks),
        },
        "required": ["candidate", "stable"],
        "additionalProperties": False,
        "description": "Omitted or null keys take their defaults; steps strictly increase.",
    }
    compare = {
        "type": "object",
        "properties": {
            "max_body": OR_DEFAULT(
                {
                    "oneOf": [
                        {"type": "integer", "minimum": 0, "maximum": 16 * 1024 * 1024},
                        {"type": "string", "description": 'A size like "64KiB" or "1MiB".'},
                    ]
                }
            ),
            "ignore_headers": OR_DEFAULT(
                {"type": "array", "items": {"type": "string", "minLength": 1}}
            ),
            "ignore_json": OR_DEFAULT(
                {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1},
                    "description": 'JSON path patterns like "$.items[*].etag".',
                }
            ),
            "samples": OR_DEFAULT({"type": "integer", "minimum": 1, "maximum": 10_000}),
            "relative_threshold": OR_DEFAULT({"type": "number", "minimum": 0, "maximum": 1e6}),
            "absolute_threshold": OR_DEFAULT({"type": "number", "minimum": 0, "maximum": 1}),
        },
        "additionalProperties": False,
    }
    shadow = {
        "type": "object",
        "properties": {
            "pool": OR_DEFAULT({**pool_name, "description": "If given, the URL's pool."}),
            "percent": OR_DEFAULT({"type": "number", "minimum": 0, "maximum": 100}),
            "methods": OR_DEFAULT(
                {
                    "type": "array",
                    "items": {"type": "string", "pattern": "^[A-Za-z]+$"},
                    "minItems": 1,
                }
            ),
            "timeout": OR_DEFAULT(DURATION),
            "max_in_flight": OR_DEFAULT({"type": "integer", "minimum": 1, "maximum": 10_000}),
            "baseline": OR_DEFAULT(pool_name),
            "compare": OR_DEFAULT(compare),
        },
        "additionalProperties": False,
        "description": "PUT: the whole shadow (defaults for what it omits). PATCH: the keys"
        " given change the current shadow (compare merged key by key).",
    }
    return {
        "WeightsRequest": {
            "type": "object",
            "properties": {
                "weights": {
                    "type": "object",
                    "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 1_000_000},
                    "minProperties": 1,
                    "description": "Pools not named get 0; at least one weight above 0.",
                }
            },
            "required": ["weights"],
            "additionalProperties": False,
        },
        "FlipRequest": {
            "type": "object",
            "properties": {
                "to": {"type": "string", "minLength": 1},
                "force": {"type": "boolean", "description": "Flip even with no healthy endpoint."},
            },
            "required": ["to"],
            "additionalProperties": False,
        },
        "EndpointsRequest": {
            "type": "object",
            "properties": {
                "endpoints": {
                    "type": "array",
                    "items": {"type": "string", "minLength": 1, "description": "host:port"},
                    "maxItems": 1024,
                }
            },
            "required": ["endpoints"],
            "additionalProperties": False,
        },
        "ShadowRequest": shadow,
        "RolloutRequest": rollout,
        "IgnoredBody": {
            "type": "object",
            "description": "Any JSON object, or no body; its contents are not read.",
        },
    }


# --- operations ---------------------------------------------------------------------------------

ETAG_HEADER: Final[Schema] = {
    "description": 'The routing state\'s version, e.g. "7" (on every /v1 answer, errors too).',
    "schema": {"type": "string", "pattern": '^"[0-9]+"$'},
}

# What each error status means on the control API (an operation adds its own cases).
ERRORS: Final = {
    400: "The body is not a JSON object, is over 64 KiB or breaks the schema; If-Match is not"
    " a version; a query parameter is invalid (wait other than fleet, wait=fleet on a single"
    " host, wait_timeout out of range).",
    401: "No Authorization: Bearer header where a token is needed.",
    403: "Wrong token, or a change while no admin token is configured.",
    404: "Unknown route (detail.routes lists them), pool or path.",
    405: "The path (after its parameters resolve) does not take this method.",
    409: "If-Match names an older version (detail.current_version), or the change is refused"
    " (detail.code).",
    500: "Unexpected failure, e.g. the state file cannot be written (state_not_saved): nothing"
    " changed.",
    503: "In a fleet: the state store (etcd) cannot be reached or refused (store_unreachable,"
    " store_refused).",
    504: "?wait=fleet: the change is made, but some members did not report it in time"
    " (fleet_wait_timeout, detail.lagging).",
}


# The shared error answers under components/responses, by status; an operation with more to
# say about a status gets its own copy with the note added.
ERROR_NAMES: Final = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    500: "InternalError",
    503: "StoreUnavailable",
    504: "FleetWaitTimeout",
}


def error_answer(status: int, note: str = "") -> Schema:
    return {
        "description": f"{ERRORS[status]} {note}".strip(),
        "headers": {"ETag": ETAG_HEADER},
        "content": {"application/json": {"schema": ref("Error")}},
    }


def error_response(status: int, note: str = "") -> Schema:
    if not note:
        return {"$ref": f"#/components/responses/{ERROR_NAMES[status]}"}
    return error_answer(status, note)


def json_response(description: str, schema: Schema, etag: bool = True) -> Schema:
    answer: Schema = {
        "description": description,
        "content": {"application/json": {"schema": schema}},
    }
    if etag:
        answer["headers"] = {"ETag": ETAG_HEADER}
    return answer


def parameter(name: str, where: str, description: str, schema: Schema | None = None) -> Schema:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema or {"type": "string"},
    }


ROUTE: Final = parameter("route", "path", "A route's name (config order in GET /v1/routes).")
POOL: Final = parameter("pool", "path", "A pool of the route.")
ENDPOINT: Final = parameter("endpoint", "path", "An endpoint of the pool, host:port.")
COMMAND: Final = parameter(
    "command",
    "path",
    "What to do with the rollout.",
    {"enum": ["pause", "resume", "promote", "abort"]},
)
IF_MATCH: Final = parameter(
    "If-Match",
    "header",
    'Change only if the state is still at this version: "7", 7 or W/"7"; * or none means any.',
    {"type": "string", "pattern": r'^\s*(\*|(W/)?"?[0-9]{1,19}"?)\s*$'},
)
WAIT: Final = parameter(
    "wait",
    "query",
    "fleet: answer once every live member of the fleet reports the new version (a fleet"
    " only: 400 on a single host).",
    {"enum": ["fleet"]},
)
WAIT_TIMEOUT: Final = parameter(
    "wait_timeout",
    "query",
    "With wait=fleet: seconds to wait for the members (default 10).",
    {"type": "number", "exclusiveMinimum": 0, "maximum": 120},
)

# Reads: open when admin.listen is a loopback address ({}), else the token.
READ_SECURITY: Final[list[dict[str, list[str]]]] = [{}, {"bearerAuth": []}]
WRITE_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}]


def read(
    operation_id: str,
    summary: str,
    answer: Schema,
    errors: dict[int, str] | None = None,
    parameters: list[Schema] | None = None,
) -> Schema:
    """A GET under /v1: open on a loopback admin listener, else it needs the token."""
    responses: dict[str, Schema] = {"200": answer}
    for status, note in {401: "", 403: "", **(errors or {})}.items():
        responses[str(status)] = error_response(status, note)
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "security": READ_SECURITY,
        "responses": dict(sorted(responses.items())),
    }
    if parameters:
        operation["parameters"] = parameters
    return operation


def write(
    operation_id: str,
    summary: str,
    answers: dict[int, Schema],
    errors: dict[int, str],
    body: str | None = None,
    body_required: bool = True,
    if_match: bool = True,
) -> Schema:
    """A change: needs the token, takes ?wait=fleet (and If-Match where the handler reads
    it); every one of them may meet the fleet's 503/504 and a failed save's 500."""
    responses: dict[str, Schema] = {str(status): answer for status, answer in answers.items()}
    common = {400: "", 401: "", 403: "", 500: "", 503: "", 504: ""}
    for status, note in {**common, **errors}.items():
        responses[str(status)] = error_response(status, note)
    operation: Schema = {
        "operationId": operation_id,
        "summary": summary,
        "security": WRITE_SECURITY,
        "parameters": ([IF_MATCH] if if_match else []) + [WAIT, WAIT_TIMEOUT],
        "responses": dict(sorted(responses.items())),
    }
    if body is not None:
        operation["requestBody"] = {
            "required": body_required,
            "content": {"application/json": {"schema": ref(body)}},
        }
    return operation


ROUTE_404: Final = "Unknown route."
POOL_404: Final = "Unknown route or pool (detail.pools lists the route's pools)."
CHANGE_409: Final = (
    "A manual traffic change while a rollout drives the route (rollout_in_progress); in a"
    " fleet, a state that does not fit this member's config (config_differs) or one that kept"
    " changing (version_conflict)."
)


def paths() -> dict[str, Schema]:
    route_answer = json_response("The route after the change.", ref("Route"))
    pool_answer = json_response("The pool after the change.", ref("PoolView"))
    rollout_answer = json_response("The rollout's status after the command.", ref("Rollout"))
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness: 200 while serving, 503 while draining. No token.",
                "security": [],
                "responses": {
                    "200": json_response("Serving.", ref("Health"), etag=False),
                    "503": json_response("Draining (shutting down).", ref("Health"), etag=False),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of the whole host. No token.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/v1/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document. No token: it is the same for every installation.",
                "security": [],
                "responses": {
                    "200": json_response("The OpenAPI document.", {"type": "object"}, etag=False)
                },
            }
        },
        "/v1/fleet": {
            "get": read(
                "getFleet",
                "The fleet's members, their applied version and lag (state.store: etcd).",
                json_response("The fleet.", ref("Fleet")),
                {404: "On a single host (not_a_fleet).", 503: ""},
            )
        },
        "/v1/reload": {
            "post": write(
                "reload",
                "Read the config file again and serve it, without a restart.",
                {200: json_response("The config in force.", ref("Reload"))},
                {
                    400: "The config file has problems (bad_config, detail.problems); the old"
                    " one keeps serving.",
                    409: CHANGE_409,
                },
                body="IgnoredBody",
                body_required=False,
                if_match=False,
            )
        },
        "/v1/routes": {
            "get": read(
                "listRoutes",
                "Every route, in config order.",
                json_response("The routes.", ref("Routes")),
            )
        },
        "/v1/routes/{route}": {
            "parameters": [ROUTE],
            "get": read(
                "getRoute",
                "One route: weights, live pool, rollback point, pools and endpoints.",
                json_response("The route.", ref("Route")),
                {404: ROUTE_404, 405: ""},
            ),
        },
        "/v1/routes/{route}/weights": {
            "parameters": [ROUTE],
            "put": write(
                "putWeights",
                "Replace the route's weights; pools not named get 0.",
                {200: route_answer},
                {
                    404: POOL_404,
                    405: "",
                    409: "If-Match is stale; a pool given weight has no endpoint that takes"
                    " requests (no_endpoints). " + CHANGE_409,
                },
                body="WeightsRequest",
            ),
        },
        "/v1/routes/{route}/flip": {
            "parameters": [ROUTE],
            "post": write(
                "flip",
                "All traffic to one pool (weight 100, others 0).",
                {200: route_answer},
                {
                    404: POOL_404,
                    405: "",
                    409: "If-Match is stale; the pool has no healthy endpoint and force is not"
                    " set; it has no endpoint that takes requests (no_endpoints). " + CHANGE_409,
                },
                body="FlipRequest",
            ),
        },
        "/v1/routes/{route}/rollback": {
            "parameters": [ROUTE],
            "post": write(
                "rollback",
                "Back to the weights before the route's last change.",
                {200: route_answer},
                {
                    404: ROUTE_404,
                    405: "",
                    409: "If-Match is stale; nothing to roll back (nothing_to_roll_back);"
                    " no_endpoints. " + CHANGE_409,
                },
                body="IgnoredBody",
                body_required=False,
            ),
        },
        "/v1/routes/{route}/counters": {
            "parameters": [ROUTE],
            "get": read(
                "getCounters",
                "This host's cumulative counters for the route's pools (what a fleet's rollout"
                " driver sums).",
                json_response("The counters.", ref("Counters")),
                {404: ROUTE_404, 405: ""},
                [
                    parameter(
                        "candidate",
                        "query",
                        "A pool whose shadow comparisons to count as `mismatch`.",
                    )
                ],
            ),
        },
        "/v1/routes/{route}/pools/{pool}": {
            "parameters": [ROUTE, POOL],
            "get": read(
                "getPool",
                "One pool: weight, endpoints, DNS endpoints' resolutions.",
                json_response("The pool.", ref("PoolView")),
                {404: POOL_404, 405: ""},
            ),
            "delete": write(
                "deletePool",
                "Delete a pool that takes no requests.",
                {200: route_answer},
                {
                    404: POOL_404,
                    405: "",
                    409: "If-Match is stale; the pool takes or may take requests (pool_in_use)."
                    " " + CHANGE_409,
                },
            ),
        },
        "/v1/routes/{route}/pools/{pool}/endpoints": {
            "parameters": [ROUTE, POOL],
            "post": write(
                "addEndpoints",
                "Add endpoints to the pool, creating it (weight 0) if the route has none of"
                " that name.",
                {200: pool_answer, 201: json_response("The pool, created.", ref("PoolView"))},
                {
                    400: "An endpoint is not host:port (bad_endpoint), the pool name is not"
                    " valid or the route has 64 pools (bad_pool).",
                    404: ROUTE_404,
                    405: "",
                    409: "If-Match is stale; an endpoint is already in the pool"
                    " (duplicate_endpoint). " + CHANGE_409,
                },
                body="EndpointsRequest",
            ),
            "put": write(
                "setEndpoints",
                "Replace the pool's endpoints.",
                {200: pool_answer},
                {
                    400: "An endpoint is not host:port (bad_endpoint).",
                    404: POOL_404,
                    405: "",
                    409: "If-Match is stale; an endpoint is given twice (duplicate_endpoint);"
                    " emptying a pool that takes requests (pool_in_use). " + CHANGE_409,
                },
                body="EndpointsRequest",
            ),
        },
        "/v1/routes/{route}/pools/{pool}/endpoints/{endpoint}": {
            "parameters": [ROUTE, POOL, ENDPOINT],
            "delete": write(
                "removeEndpoint",
                "Take one endpoint out of the pool (its requests in flight finish).",
                {200: pool_answer},
                {
                    400: "The endpoint is not host:port (bad_endpoint).",
                    404: "Unknown route, pool or endpoint (unknown_endpoint).",
                    405: "",
                    409: "If-Match is stale; the last endpoint of a pool that takes requests"
                    " (pool_in_use). " + CHANGE_409,
                },
            ),
        },
        "/v1/routes/{route}/pools/{pool}/endpoints/{endpoint}/drain": {
            "parameters": [ROUTE, POOL, ENDPOINT],
            "post": write(
                "drainEndpoint",
                "Drain one endpoint: no new requests, listed as draining until removed.",
                {200: pool_answer},
                {
                    400: "The endpoint is not host:port (bad_endpoint).",
                    404: "Unknown route, pool or endpoint (unknown_endpoint).",
                    405: "",
                    409: "If-Match is stale; the last endpoint of a pool that takes requests"
                    " (pool_in_use). " + CHANGE_409,
                },
            ),
        },
        "/v1/routes/{route}/shadows": {
            "parameters": [ROUTE],
            "get": read(
                "listShadows",
                "The route's shadows with their counts.",
                json_response("The shadows.", ref("Shadows")),
                {404: ROUTE_404, 405: ""},
            ),
        },
        "/v1/routes/{route}/shadows/{pool}": {
            "parameters": [ROUTE, POOL],
            "get": read(
                "getShadow",
                "One shadow: settings, counts, mismatch rates per path.",
                json_response("The shadow.", ref("Shadow")),
                {404: "Unknown route or shadow.", 405: ""},
            ),
            "put": write(
                "putShadow",
                "Add or replace the shadow of this pool.",
                {200: json_response("The shadow.", ref("Shadow"))},
                {
                    404: POOL_404,
                    405: "",
                    409: "If-Match is stale; the pool or baseline takes live traffic"
                    " (shadow_conflict). " + CHANGE_409,
                },
                body="ShadowRequest",
            ),
            "patch": write(
                "patchShadow",
                "Change some settings of the shadow.",
                {200: json_response("The shadow.", ref("Shadow"))},
                {
                    404: "Unknown route or shadow.",
                    405: "",
                    409: "If-Match is stale; the baseline takes live traffic"
                    " (shadow_conflict). " + CHANGE_409,
                },
                body="ShadowRequest",
            ),
            "delete": write(
                "deleteShadow",
                "Remove the shadow.",
                {200: route_answer},
                {404: "Unknown route or shadow (no_shadow).", 405: "", 409: CHANGE_409},
            ),
        },
        "/v1/routes/{route}/shadows/{pool}/diffs": {
            "parameters": [ROUTE, POOL],
            "get": read(
                "getDiffs",
                "The shadow's kept mismatch samples, newest first, with its summary.",
                json_response("The diffs.", ref("Diffs")),
                {400: "limit is not a positive integer.", 404: "Unknown route or shadow.", 405: ""},
                [
                    parameter(
                        "limit",
                        "query",
                        "Samples in the answer (default 20).",
                        {"type": "integer", "minimum": 1, "maximum": 2**63 - 1},
                    )
                ],
            ),
        },
        "/v1/routes/{route}/rollout": {
            "parameters": [ROUTE],
            "post": write(
                "startRollout",
                "Start a canary rollout of `candidate` against `stable`.",
                {201: json_response("The rollout, started.", ref("Rollout"))},
                {
                    400: "The spec is invalid (bad_rollout, the message names the key).",
                    404: "Unknown route, or a pool the route lacks (unknown_pool).",
                    405: "",
                    409: "If-Match is stale; a rollout is active (rollout_exists); the"
                    " candidate has no endpoint (no_endpoints); in a fleet another member"
                    " drives the route (not_the_driver). " + CHANGE_409,
                },
                body="RolloutRequest",
            ),
            "get": read(
                "getRollout",
                "The route's rollout: phase, step, last analysis, history.",
                json_response("The rollout.", ref("Rollout")),
                {404: "Unknown route, or no rollout (no_rollout).", 405: ""},
            ),
        },
        "/v1/routes/{route}/rollout/{command}": {
            "parameters": [ROUTE, COMMAND],
            "post": write(
                "rolloutCommand",
                "Pause, resume, promote or abort the rollout.",
                {200: rollout_answer},
                {
                    404: "Unknown route or command, or no rollout (no_rollout).",
                    405: "",
                    409: "If-Match is stale; the rollout is finished (rollout_finished) or"
                    " the command does not apply to its phase (bad_command); in a fleet"
                    " another member drives it (not_the_driver). " + CHANGE_409,
                },
            ),
        },
    }


def document() -> Schema:
    """The whole OpenAPI 3.1 document."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Pointsman admin API",
            "version": "1",
            "description": "The admin listener (admin.listen): the control API under /v1,"
            " Prometheus /metrics and /healthz. Bodies are JSON both ways. Every /v1 answer,"
            " errors included, carries the routing state's version as ETag; a change may send"
            " it back as If-Match. Changes need `Authorization: Bearer <token>`; /v1 reads"
            " need it too unless admin.listen is a loopback address. The token is checked"
            " before the route, the body and the version. Every GET also answers HEAD.",
        },
        "servers": [{"url": "http://127.0.0.1:8081", "description": "The default admin.listen"}],
        "paths": paths(),
        "components": {
            "schemas": schemas(),
            "responses": {name: error_answer(status) for status, name in ERROR_NAMES.items()},
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The admin token (admin.token_file, or the environment"
                    " variable admin.token_env, POINTSMAN_TOKEN by default).",
                }
            },
        },
    }


def render() -> str:
    """The document as control/openapi.json holds it."""
    return json.dumps(document(), indent=2) + "\n"


def main() -> int:
    DOCUMENT_PATH.write_text(render(), encoding="utf-8")
    print(f"wrote {DOCUMENT_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
