"""`pointsman diffs`: a shadow's comparison, rates per path, the latest mismatches with a replay
`curl` line."""

from __future__ import annotations

import argparse
import shlex
import time
from typing import Any

from control.cli.common import (
    _BadAnswer,
    _control,
    _text,
)

_REPLAY_SKIPPED = frozenset(
    {"content-length", "transfer-encoding", "x-forwarded-for", "x-forwarded-proto",
     "x-forwarded-host", "via", "connection"}
)  # fmt: skip
REDACTED = "[redacted]"


def _percent(value: object) -> str:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return f"{value * 100:.1f}%"
    return _text(value)


def replay_command(diff: dict[str, Any]) -> str:
    """A curl command that sends the mirrored request to the shadow endpoint again."""
    url = f"http://{diff.get('endpoint', '')}{diff.get('target', '/')}"
    method = str(diff.get("method", "GET"))
    # curl -X HEAD would wait for the body the answer's Content-Length announces; -I does not.
    verb = ["-I"] if method == "HEAD" else ["-i", "-X", shlex.quote(method)]
    parts = ["curl", "-sS", *verb, shlex.quote(url)]
    omitted = []
    for pair in diff.get("request_headers") or []:
        if not isinstance(pair, list) or len(pair) != 2:
            continue
        name, value = str(pair[0]), str(pair[1])
        if name.lower() in _REPLAY_SKIPPED:
            continue
        if value == REDACTED:
            omitted.append(name)
            continue
        parts += ["-H", shlex.quote(f"{name}: {value}")]
    body = diff.get("request_body")
    if isinstance(body, str):
        parts += ["--data-binary", shlex.quote(body)]
    command = " ".join(parts)
    if omitted:
        command += f"   # left out (redacted): {', '.join(omitted)}"
    if diff.get("request_body_truncated"):
        command += "   # body truncated in the sample"
    return command


def diffs_lines(body: object) -> list[str]:
    """The summary of a shadow, its paths, then each kept mismatch with a replay command."""
    if not isinstance(body, dict) or not isinstance(body.get("summary"), dict):
        raise _BadAnswer("expected an object with 'summary' and 'diffs'")
    summary: dict[str, Any] = body["summary"]
    dropped = summary.get("dropped") or {}
    dropped_total = sum(v for v in dropped.values() if isinstance(v, int))
    dropped_text = ", ".join(f"{k} {v}" for k, v in dropped.items() if v) or "none"
    lines = [
        f"{_text(body.get('route'))}/{_text(body.get('pool'))}: "
        f"{_text(summary.get('compared'))} compared, {_text(summary.get('mismatched'))} "
        f"mismatched ({_percent(summary.get('mismatch_rate'))}), "
        f"{_text(summary.get('matched'))} matched, {_text(summary.get('noise'))} noise only; "
        f"{_text(summary.get('mirrored'))} mirrored, {dropped_total} dropped ({dropped_text})"
    ]
    paths = summary.get("paths") or []
    if paths:
        baseline = bool(summary.get("baseline_samples"))
        lines.append("paths: diff rate" + (", noise rate (baseline)" if baseline else ""))
        width = max(len(str(p.get("path"))) for p in paths if isinstance(p, dict))
        for p in paths:
            if not isinstance(p, dict):
                continue
            noise = f"  noise {_percent(p.get('noise_rate')):>6}" if baseline else ""
            verdict = "counts" if p.get("counts") else "noise" if baseline else "below threshold"
            lines.append(
                f"  {p.get('path')!s:<{width}}  diff {_percent(p.get('diff_rate')):>6}"
                f"{noise}  {verdict}"
            )
    diffs = body.get("diffs")
    if not isinstance(diffs, list):
        raise _BadAnswer("diffs: expected an array")
    if not diffs:
        lines.append("no mismatches kept")
        return lines
    lines.append(f"newest {len(diffs)} of {_text(body.get('kept'))} kept mismatches:")
    for number, diff in enumerate(diffs, start=1):
        if not isinstance(diff, dict):
            raise _BadAnswer("diffs: expected objects")
        at = diff.get("at")
        when = (
            time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(at))
            if isinstance(at, int | float)
            else "?"
        )
        lines.append("")
        lines.append(
            f"#{number} {_text(diff.get('method'))} {_text(diff.get('target'))}  {when}  "
            f"id {_text(diff.get('request_id'))}  primary {_text(diff.get('primary_status'))} "
            f"in {_text(diff.get('primary_ms'))} ms, shadow {_text(diff.get('shadow_status'))} "
            f"in {_text(diff.get('shadow_ms'))} ms"
        )
        for d in diff.get("differences") or []:
            if not isinstance(d, dict):
                continue
            noise = "  (noise)" if d.get("noise") else ""
            lines.append(
                f"  {_text(d.get('path'))}: primary {_text(d.get('primary'))}  "
                f"shadow {_text(d.get('shadow'))}{noise}"
            )
        lines.append(f"  replay: {replay_command(diff)}")
    return lines


def cmd_diffs(args: argparse.Namespace) -> int:
    return _control(
        args,
        lambda client: client.diffs(args.route, args.pool, args.limit),
        lambda reply: diffs_lines(reply.body),
    )
