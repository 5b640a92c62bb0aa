#!/usr/bin/env bash
# `make run`: the demo upstreams (blue, green, dark, twin) and Pointsman in front of them, with
# config/demo.yaml. Ctrl-C stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${CONFIG:-config/demo.yaml}
BIN=.venv/bin
# Changes through the control API need a token; the demo uses a fixed one unless you set yours.
export POINTSMAN_TOKEN=${POINTSMAN_TOKEN:-demo-token}

$BIN/python -m control.demo --config "$CONFIG" &
demo_pid=$!
trap 'kill "$demo_pid" 2>/dev/null || true; wait "$demo_pid" 2>/dev/null || true' EXIT

sed "s/__TOKEN__/$POINTSMAN_TOKEN/" <<'TXT'

Pointsman is starting on http://127.0.0.1:8080 (admin and metrics on http://127.0.0.1:8081).
Try, in another terminal:

  curl -s localhost:8080/                                  # weighted: blue 90 %, green 10 %
  curl -s -H 'X-Pointsman-Pool: green' localhost:8080/     # a rule sends this one to green
  curl -s -H 'X-User-Id: alice' localhost:8080/            # sticky: alice always lands on the same pool

Blue/green with the control API (routing state persists in var/state.json):

  export POINTSMAN_TOKEN=__TOKEN__
  .venv/bin/pointsman status shop                          # weights, live pool, health
  .venv/bin/pointsman flip shop green                      # all traffic to green
  .venv/bin/pointsman rollback shop                        # back to where it was

A blind version: every GET is mirrored to "dark" and its answer compared with the live one's
("twin", a second copy of the live version, shows which differences are just noise):

  curl -s localhost:8080/api/products                      # answered by blue or green
  .venv/bin/pointsman diffs shop dark                      # what dark answers differently

Metrics: curl -s localhost:8081/metrics | grep pointsman_     Stop with Ctrl-C.

TXT
$BIN/pointsman run --config "$CONFIG"
