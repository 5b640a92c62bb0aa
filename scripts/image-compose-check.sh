#!/usr/bin/env bash
# image-compose-check.sh: bring compose.yaml up with podman-compose (project
# pointsman-check, host ports IMAGE_COMPOSE_PORT, default 18580, and the next four), check
# it, one line per check, and take it down again with its volumes, whatever happened.
# Exit 1 if any check failed. The images are built first (scripts/image-build.sh --compose).
# Checks: both members answer proxied requests; both are members of one fleet in etcd; a
# flip through member a is in force on member b; Prometheus scrapes both (its query API
# answers up == 1 for each). On a failure the last line (stderr) names the failed checks.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image-env.sh disable=SC1091
source scripts/image-env.sh
CHECK_NAME=compose-check CHECK_WIDTH=11  # for die and result (image-env.sh)
bash scripts/need.sh podman-compose podman-compose
bash scripts/need.sh curl curl

bash scripts/image-build.sh --compose
# shellcheck source=/dev/null  # written by scripts/image-base.sh
source "$IMAGE_WORK/bases.env"
export BUILD_IMAGE RUNTIME_IMAGE

port=${IMAGE_COMPOSE_PORT:-18580}
export POINTSMAN_A_PORT=$port POINTSMAN_A_ADMIN_PORT=$((port + 1))
export POINTSMAN_B_PORT=$((port + 2)) POINTSMAN_B_ADMIN_PORT=$((port + 3))
export PROMETHEUS_PORT=$((port + 4))
export POINTSMAN_TOKEN=${POINTSMAN_TOKEN:-compose-check}
project=pointsman-check
log=$IMAGE_WORK/compose.log
failed=()
# shellcheck disable=SC2317  # run by the trap
cleanup() {
    echo "image: podman-compose down -v" >&2
    timeout 120 podman-compose -p "$project" -f compose.yaml down -v -t 20 >>"$log" 2>&1 ||
        echo "image: podman-compose down failed (see $log)" >&2
    # podman-compose 1.0 leaves the project's network behind
    timeout 60 podman network rm -f "${project}_default" >>"$log" 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

until_ok() {  # seconds command...: run the command every 0.5 s until it succeeds
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        ((SECONDS < end)) || return 1
        sleep 0.5
    done
}

wait_for_bench
start=$SECONDS
: >"$log"
if ! timeout 300 podman-compose -p "$project" -f compose.yaml up -d --no-build >>"$log" 2>&1; then
    tail -30 "$log"
    die "podman-compose up failed (whole log: $log)"
fi
echo "image: compose up in $((SECONDS - start)) s:" \
    "$(podman ps --filter "label=io.podman.compose.project=$project" --format '{{.Names}}' | paste -sd ' ')"

for member in a:$POINTSMAN_A_PORT b:$POINTSMAN_B_PORT; do
    id=${member%%:*} p=${member#*:}
    if until_ok 60 curl -sf --max-time 2 -o /dev/null "http://127.0.0.1:$p/"; then
        result ok "member $id" "GET / on :$p: $(curl -s --max-time 5 "http://127.0.0.1:$p/")"
    else
        result FAIL "member $id" "no answer on :$p within 60 s; its log:"
        podman logs "${project}_pointsman-${id}_1" 2>&1 | tail -15
    fi
done

fleet_members() {  # the member ids in member a's view of the fleet, or what it answered
    # (off loopback, reads of the control API need the token too)
    curl -s --max-time 5 -H "Authorization: Bearer $POINTSMAN_TOKEN" \
        "http://127.0.0.1:$POINTSMAN_A_ADMIN_PORT/v1/fleet" 2>&1 |
        python3 -c 'import json, sys
text = sys.stdin.read()
try:
    print(" ".join(sorted(m["id"] for m in json.loads(text)["members"])))
except (ValueError, KeyError, TypeError):
    print("answered: " + (text.strip()[:200] or "nothing"))'
}
# shellcheck disable=SC2317  # run by until_ok
two_members() { [[ $(fleet_members 2>/dev/null) == "pointsman-a:8081 pointsman-b:8081" ]]; }
if until_ok 30 two_members; then
    result ok fleet "members in etcd: $(fleet_members)"
else
    result FAIL fleet "members in etcd: $(fleet_members)"
fi

# A change through member a is in force on member b: flip to green, wait for the fleet.
# ?wait=fleet: the answer comes once every member has applied the change (at most 10 s).
flip=$(curl -s --max-time 20 -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $POINTSMAN_TOKEN" -H 'Content-Type: application/json' \
    -d '{"to": "green"}' "http://127.0.0.1:$POINTSMAN_A_ADMIN_PORT/v1/routes/shop/flip?wait=fleet" 2>&1) || true
answer=$(curl -s --max-time 5 "http://127.0.0.1:$POINTSMAN_B_PORT/" 2>&1) || true
if [[ $flip == 200 && $answer == "hello from green"* ]]; then
    result ok flip "flip to green through a (200), then b answers: $answer"
else
    result FAIL flip "flip to green through a answered ${flip:-nothing}, then b answers: ${answer:-nothing}"
fi

# Prometheus: the value of up{job="pointsman"} per instance, from its query API.
up_values() {  # "instance=value ..." sorted, or what it answered
    curl -s --max-time 5 -G --data-urlencode 'query=up{job="pointsman"}' \
        "http://127.0.0.1:$PROMETHEUS_PORT/api/v1/query" 2>&1 |
        python3 -c 'import json, sys
text = sys.stdin.read()
try:
    r = json.loads(text)["data"]["result"]
    print(" ".join(sorted(x["metric"]["instance"] + "=" + x["value"][1] for x in r)) or "no series yet")
except (ValueError, KeyError, TypeError, IndexError):
    print("answered: " + (text.strip()[:200] or "nothing"))'
}
# shellcheck disable=SC2317  # run by until_ok
both_up() { [[ $(up_values 2>/dev/null) == "pointsman-a:8081=1 pointsman-b:8081=1" ]]; }
if until_ok 60 both_up; then
    result ok prometheus "up{job=\"pointsman\"}: $(up_values)"
else
    result FAIL prometheus "up{job=\"pointsman\"}: $(up_values)"
    podman logs "${project}_prometheus_1" 2>&1 | tail -10
fi

((${#failed[@]} == 0)) || die "${failed[*]} (see the FAIL lines above)"
echo "compose-check: all checks passed"
