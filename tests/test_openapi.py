"""The control API's contract: control/openapi.json (built by control/openapi.py), served at
GET /v1/openapi.json, valid OpenAPI 3.1, covering every route of the admin listener, and
honoured by a live admin API under schemathesis (no 500, every status, content type and body
as documented).

schemathesis runs as its CLI in a subprocess, against a real `control.service.Service` on
127.0.0.1 in this test's event loop: the test awaits the subprocess while the loop serves it.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import OpenAPIV31SpecValidator

from control import openapi
from control.rollout import WebhookSpec
from control.rollouts import _HookSender
from control.service import Service
from proxy.config_loader import load_config
from tests.conftest import free_port, on_free_ports
from tests.test_api import LIMIT, TOKEN, admin_port

pytestmark = pytest.mark.timeout(90)

# Checks schemathesis runs on every answer: what "conforms to the document" means here.
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
)
# Generated cases per operation in the fuzzing phase (the coverage phase adds its boundary
# and negative cases): enough to reach every handler's refusals, few enough that the whole
# run stays well under 40 s on two cores.
MAX_EXAMPLES = 15
SEED = 20261206  # fixed: a failure here reproduces with the same command
ST_LIMIT = 80.0  # seconds the schemathesis run may take at most


def config_text(state: Path, dns_port: int, endpoints: list[str]) -> str:
    """Route shop: blue live, green idle, dark a shadow, on `endpoints`. No upstream has to
    answer (the test sends no traffic through the proxy). DNS endpoints a test case adds are
    asked of a port nothing listens on, so no query leaves the machine."""
    blue, green, dark = endpoints
    return f"""\
listen: 127.0.0.1:1
admin: {{listen: 127.0.0.1:2}}
state: {{path: "{state}"}}
timeouts: {{grace: 1s}}
dns: {{servers: ["127.0.0.1:{dns_port}"], timeout: 0.05s}}
routes:
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {{endpoints: ["{blue}"]}}
      green: {{endpoints: ["{green}"]}}
      dark: {{endpoints: ["{dark}"]}}
    weights: {{blue: 100}}
    shadows:
      - {{pool: dark}}
"""


@dataclass
class Admin:
    service: Service
    session: aiohttp.ClientSession
    url: str  # http://127.0.0.1:<admin port>
    endpoints: list[str]  # the config's: blue's, green's and dark's
    webhooks: list[str]  # URLs a rollout would have posted to (none is sent)

    async def get(self, path: str, token: str | None = None) -> tuple[int, str, Any]:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        async with asyncio.timeout(LIMIT):
            async with self.session.get(self.url + path, headers=headers) as resp:
                return resp.status, resp.content_type, json.loads(await resp.text())


@pytest.fixture
async def admin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Admin]:
    """A started Service reading its config from a file (so POST /v1/reload works)."""
    monkeypatch.setenv("POINTSMAN_TOKEN", TOKEN)
    webhooks: list[str] = []

    async def no_webhook(
        sender: _HookSender, url: str, body: dict[str, Any], hooks: WebhookSpec, confirm: bool
    ) -> tuple[bool, str]:
        # Generated rollouts name any URL as their webhook: keep every request on this machine.
        webhooks.append(url)
        return False, "webhooks are not sent in this test"

    monkeypatch.setattr(_HookSender, "_post", no_webhook)
    path = tmp_path / "pointsman.yaml"
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    path.write_text(config_text(tmp_path / "state.json", free_port(), endpoints))
    service = Service(on_free_ports(load_config(str(path))))
    await service.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=LIMIT))
    url = f"http://127.0.0.1:{admin_port(service)}"
    yield Admin(service, session, url, endpoints, webhooks)
    await session.close()
    await service.stop()


def test_the_document_is_the_generator_output() -> None:
    """control/openapi.json is what control/openapi.py builds (`python -m control.openapi`
    writes it again after a change)."""
    assert openapi.DOCUMENT_PATH.read_text(encoding="utf-8") == openapi.render()


def test_the_document_is_valid_openapi_3_1() -> None:
    document = json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
    assert document["openapi"].startswith("3.1.")
    errors = [str(e) for e in OpenAPIV31SpecValidator(document).iter_errors()]
    assert errors == []


def test_every_refusal_code_is_documented() -> None:
    """detail.code in the document lists every code the state machines can refuse with."""
    codes = openapi.document()["components"]["schemas"]["Error"]["properties"]["detail"]
    listed = set(codes["anyOf"][0]["properties"]["code"]["enum"])
    assert {"bad_weights", "no_rollout", "store_unreachable", "fleet_wait_timeout"} <= listed
    assert "unchanged" not in listed  # a change already in force answers 200


def documented(app: web.Application) -> tuple[set[tuple[str, str]], set[tuple[str, str]]]:
    """(method, path) pairs the admin app serves (HEAD aside) and those the document has."""
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method != "HEAD"
    }
    document = json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
    described = {
        (method, path)
        for path, item in document["paths"].items()
        for method in item
        if method != "parameters"
    }
    return served, described


async def test_the_document_covers_every_route_of_the_admin_listener(admin: Admin) -> None:
    runner = admin.service._admin_runner
    assert runner is not None
    served, described = documented(runner.app)
    assert served == described


async def test_get_openapi_serves_the_file_without_a_token(admin: Admin) -> None:
    status, content_type, body = await admin.get("/v1/openapi.json")
    assert (status, content_type) == (200, "application/json")
    assert body == json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
    # Reads that need the token (here with a wrong one) still get the document.
    status, _, again = await admin.get("/v1/openapi.json", token="wrong")
    assert (status, again) == (200, body)


def schemathesis_config(admin: Admin) -> str:
    """schemathesis.toml: path parameters and the body keys that name a pool or an endpoint
    mostly take names the service has (random text only meets 404 and never reaches the
    handlers' own checks), sometimes anything; "canary" is a pool a case may create."""
    pools = ["blue", "green", "dark", "canary"]
    endpoints = [*admin.endpoints, "127.0.0.1:9", "[::1]:8080", "backend.invalid:80"]
    bindings = {
        "path.route": ("routes", 0.9),
        "path.pool": ("pools", 0.8),
        "path.endpoint": ("endpoints", 0.8),
        "body.to": ("pools", 0.8),
        "body.candidate": ("pools", 0.8),
        "body.stable": ("pools", 0.8),
        "body.baseline": ("pools", 0.8),
        "body.endpoints[*]": ("endpoints", 0.8),
        "header.If-Match": ("versions", 0.7),  # mostly "any version": past the version check
    }
    lines = [
        "[dictionaries.routes]",
        'values = ["shop"]',
        "[dictionaries.pools]",
        f"values = {json.dumps(pools)}",
        "[dictionaries.endpoints]",
        f"values = {json.dumps(endpoints)}",
        "[dictionaries.versions]",
        'values = ["*"]',
        "[parameters]",
        *(
            f'"{key}" = {{ dictionary = "{name}", probability = {chance} }}'
            for key, (name, chance) in bindings.items()
        ),
    ]
    return "\n".join(lines) + "\n"


async def run_schemathesis(admin: Admin, report: Path) -> tuple[int, str]:
    """The schemathesis CLI against the live admin API, loading the document it serves."""
    config = report.with_name("schemathesis.toml")
    config.write_text(schemathesis_config(admin))
    command = [
        # The file, not the URL: loaded from a URL, schemathesis leaves out the operation
        # that serves it (test_get_openapi_serves_the_file_without_a_token checks that one).
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config),
        "run", str(openapi.DOCUMENT_PATH),
        "--url", admin.url,
        "--header", f"Authorization: Bearer {TOKEN}",
        "--checks", ",".join(CHECKS),
        "--phases", "examples,coverage,fuzzing",
        "--max-examples", str(MAX_EXAMPLES),
        "--seed", str(SEED),
        "--workers", "1",
        "--request-timeout", "5",
        "--no-shrink",
        "--report", "json", "--report-json-path", str(report),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command,
        cwd=report.parent,  # schemathesis's own files (.hypothesis) stay out of the repo
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(ST_LIMIT):
            output, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


async def test_the_live_admin_api_conforms_to_the_document(admin: Admin, tmp_path: Path) -> None:
    report_path = tmp_path / "schemathesis.json"
    code, output = await run_schemathesis(admin, report_path)
    report = json.loads(report_path.read_text())
    operations, cases = report["operations"], report["test_cases"]
    print(
        f"schemathesis: {operations['tested']}/{operations['total']} operations,"
        f" {cases['generated']} test cases, {len(report['failures'])} failure groups"
    )
    assert code == 0 and not report["failures"] and not report["errors"], output
    # Every operation ran, with some cases each (a schema schemathesis could not use would
    # leave operations untested and still exit 0).
    document = json.loads(openapi.DOCUMENT_PATH.read_text(encoding="utf-8"))
    described = sum(m != "parameters" for item in document["paths"].values() for m in item)
    assert operations["tested"] == operations["total"] == described, output
    assert cases["generated"] >= operations["total"] * MAX_EXAMPLES, output
    assert report["complete"] and report["stop_reason"] == "completed", output
    # Generated changes got through, not only refusals: the routing state moved on.
    plane = admin.service.plane
    assert plane is not None and plane.doc.version > 1, output
    # The service still answers after all that: nothing it was asked wedged it.
    status, _, body = await admin.get("/healthz")
    assert (status, body["status"]) == (200, "ok")


async def raw_exchange(port: int, head: bytes) -> tuple[int, dict[str, str], Any]:
    """One request written as bytes (aiohttp's client will not send a header that is not
    UTF-8); (status, headers, JSON body) of the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head + b"Connection: close\r\nContent-Length: 0\r\n\r\n")
        async with asyncio.timeout(LIMIT):
            answer = await reader.read(-1)
    finally:
        writer.close()
    top, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = top.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    return int(status_line.split()[1]), headers, json.loads(body)


ROLLBACK = b"POST /v1/routes/shop/rollback HTTP/1.1\r\nHost: admin\r\n"
BEARER = f"Authorization: Bearer {TOKEN}\r\n".encode()
DIFFS = "GET /v1/routes/shop/shadows/dark/diffs?limit={} HTTP/1.1\r\nHost: admin\r\n"


@pytest.mark.parametrize(
    ("head", "status", "detail"),
    [
        # Digits str.isdigit() takes and int() refuses: a 500 before the fix.
        (ROLLBACK + BEARER + "If-Match: ²\r\n".encode(), 400, {"got": "²"}),
        # More digits than int() converts: a 500 before the fix.
        (ROLLBACK + BEARER + b"If-Match: " + b"7" * 5000 + b"\r\n", 400, None),
        (ROLLBACK + BEARER + b"If-Match: " + b"9" * 20 + b"\r\n", 400, None),
        (ROLLBACK + BEARER + b"If-Match: " + b"9" * 19 + b"\r\n", 409, None),
        # A byte that is not UTF-8, echoed in `got`: a plain-text 500 before the fix.
        (ROLLBACK + BEARER + b"If-Match: \xb2\r\n", 400, {"got": "\ufffd"}),
        # A token that is not UTF-8: a 500 before the fix, now simply the wrong token.
        (ROLLBACK + b"Authorization: Bearer \xb2\r\n", 403, None),
        (DIFFS.format("%C2%B2").encode(), 400, {"got": "²"}),
        (DIFFS.format("7" * 5000).encode(), 400, None),
    ],
    ids=[
        "if-match-superscript",
        "if-match-5000-digits",
        "if-match-20-digits",
        "if-match-19-digits",
        "if-match-not-utf8",
        "token-not-utf8",
        "limit-superscript",
        "limit-5000-digits",
    ],
)
async def test_odd_numbers_and_bytes_are_refused_as_json(
    admin: Admin, head: bytes, status: int, detail: dict[str, str] | None
) -> None:
    """Defects found while deriving the document: each of these answered 500."""
    port = admin_port(admin.service)
    got_status, headers, body = await raw_exchange(port, head)
    assert got_status == status, body
    assert headers["content-type"].startswith("application/json")
    assert headers["etag"] == '"1"'
    assert set(body) == {"error", "detail"} and body["error"]
    if detail is not None:
        assert body["detail"] == detail
