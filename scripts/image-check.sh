#!/usr/bin/env bash
# image-check.sh: run the Pointsman image ($IMAGE) as `make image` checks it, one line per
# check, exit 1 if any failed. Two containers, both on the host's network, on loopback ports
# (IMAGE_CHECK_PORT, default 18480, and the next three):
#   - upstreams: the demo upstreams (control.demo, from the same image): "blue" and "slow";
#   - pointsman: the image as it ships (entrypoint, user, stop signal), 2 workers, with a
#     test config mounted at /etc/pointsman/pointsman.yaml (written to build/image/check/).
# Checks: it answers proxied requests; it runs as a non-root user; the data plane's modules
# are the compiled ones (.so); `podman stop` drains: a request in flight when the stop
# starts (its upstream answers after 3 s) still gets 200, the container logs its drain and
# exits 0 before the grace (10 s) is out. The containers are removed at the end, whatever
# happened. On a failure the last line (stderr) names the checks that failed.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image-env.sh disable=SC1091
source scripts/image-env.sh
CHECK_NAME=image-check CHECK_WIDTH=9  # for die and result (image-env.sh)
bash scripts/need.sh curl curl

port=${IMAGE_CHECK_PORT:-18480}
listen=$port admin=$((port + 1)) blue=$((port + 2)) slow=$((port + 3))
work=$IMAGE_WORK/check
mkdir -p "$work"
name=pointsman-check-$$
upstreams=pointsman-check-upstreams-$$
failed=()
slow_pid=
# shellcheck disable=SC2317  # run by the trap
cleanup() {
    [[ -z $slow_pid ]] || kill "$slow_pid" 2>/dev/null || true
    timeout 60 podman rm -f -t 0 "$name" "$upstreams" >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_http() {  # url seconds: 0 once it answers 200 within that many seconds
    local end=$((SECONDS + $2))
    until curl -sf --max-time 2 -o /dev/null "$1" 2>/dev/null; do
        ((SECONDS < end)) || return 1
        sleep 0.2
    done
}
in_container() {  # command...: run in the Pointsman container, its output (or error)
    timeout 30 podman exec "$name" "$@" 2>&1
}

podman image exists "$IMAGE" || die "no image $IMAGE (make image builds it)"
wait_for_bench  # no load beside a benchmark; the drain check times a stop

cat >"$work/pointsman.yaml" <<YAML
# Written by scripts/image-check.sh.
listen: 127.0.0.1:$listen
admin:
  listen: 127.0.0.1:$admin
workers: 2
timeouts:
  grace: 10s
routes:
  - name: slow
    hosts: ["*"]
    path_prefix: /slow
    pools:
      slow: {endpoints: ["127.0.0.1:$slow"]}
    weights: {slow: 100}
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue: {endpoints: ["127.0.0.1:$blue"]}
    weights: {blue: 100}
YAML
chmod 644 "$work/pointsman.yaml"

timeout 60 podman run -d --name "$upstreams" --network host --entrypoint python "$IMAGE" \
    -m control.demo --serve "blue=127.0.0.1:$blue" --serve "slow=127.0.0.1:$slow" >/dev/null ||
    die "podman run of the demo upstreams failed"
if ! { wait_http "http://127.0.0.1:$blue/" 20 && wait_http "http://127.0.0.1:$slow/" 20; }; then
    podman logs "$upstreams" 2>&1 | tail -20
    die "the demo upstreams did not answer within 20 s (their log is above)"
fi
curl -sf --max-time 5 -X POST "http://127.0.0.1:$slow/__demo/fault?delay=3" >/dev/null ||
    die "could not make the slow upstream slow (POST /__demo/fault)"

timeout 60 podman run -d --name "$name" --network host \
    -v "$work/pointsman.yaml:/etc/pointsman/pointsman.yaml:ro" "$IMAGE" >/dev/null ||
    die "podman run of $IMAGE failed"
if wait_http "http://127.0.0.1:$admin/healthz" 30; then
    result ok start "/healthz answers 200"
else
    result FAIL start "/healthz did not answer 200 within 30 s; its log:"
    podman logs "$name" 2>&1 | tail -20
    die "the container did not start (its log is above)"
fi

body=$(curl -s --max-time 5 "http://127.0.0.1:$listen/" 2>&1) || true
if [[ $body == "hello from blue"* ]]; then
    result ok proxy "GET / through the container: $body"
else
    result FAIL proxy "GET / through the container answered: ${body:-nothing}"
fi

# The user of the entrypoint's process (PID 1 in the container), and of an exec, which gets
# the image's USER too.
uid=$(in_container sed -n 's/^Uid:[[:space:]]*\([0-9]*\).*/\1/p' /proc/1/status) || true
user=$(in_container id -un) || true
if [[ $uid =~ ^[0-9]+$ && $uid != 0 ]]; then
    result ok user "PID 1 runs as uid $uid (exec user: $user)"
else
    result FAIL user "PID 1 in the container runs as uid: ${uid:-unknown}"
fi

module=$(in_container python -c 'import proxy.http1; print(proxy.http1.__file__)') || true
if [[ $module == *.so ]]; then
    result ok compiled "proxy.http1 is $module"
else
    result FAIL compiled "proxy.http1 is $module"
fi

# The drain: a request whose upstream takes 3 s is in flight when the stop starts.
rm -f "$work/slow.body" "$work/slow.status"
curl -s -o "$work/slow.body" -w '%{http_code}' --max-time 30 "http://127.0.0.1:$listen/slow" \
    >"$work/slow.status" 2>/dev/null &
slow_pid=$!
sleep 1
stop_start=$(date +%s.%N)
timeout 60 podman stop -t 30 "$name" >/dev/null 2>&1 || true
stop_seconds=$(awk -v a="$stop_start" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
wait "$slow_pid" || true  # curl's --max-time bounds it
slow_pid=
status=$(cat "$work/slow.status" 2>/dev/null || true)
exit_code=$(timeout 30 podman inspect --format '{{.State.ExitCode}}' "$name" 2>&1) || true
drain_line=$(timeout 30 podman logs "$name" 2>&1 | grep -m1 'signal received: draining' || true)
detail=$(printf 'in-flight request %s (%s), exit code %s after %s s of stop, log: %s' \
    "${status:-none}" "$(tr -d '\n' <"$work/slow.body" 2>/dev/null | cut -c1-50)" "$exit_code" \
    "$stop_seconds" "${drain_line:-no drain line}")
if [[ $status == 200 && $exit_code == 0 && -n $drain_line ]] &&
    awk -v s="$stop_seconds" 'BEGIN { exit !(s < 10) }'; then
    result ok drain "$detail"
else
    result FAIL drain "$detail"
    podman logs "$name" 2>&1 | tail -20
fi

((${#failed[@]} == 0)) || die "${failed[*]} (see the FAIL lines above)"
echo "image-check: all checks passed ($IMAGE)"
