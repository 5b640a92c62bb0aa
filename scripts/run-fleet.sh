#!/usr/bin/env bash
# `make fleet`: a fleet of two Pointsman hosts sharing one routing state in etcd, on this
# machine: a one-member etcd (fresh data in a temporary directory), the demo upstreams, and
# members a (8080, admin 8081) and b (8082, admin 8083), each with config/demo.yaml's routes
# and one worker. Ctrl-C stops everything it started and removes the temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
ETCD_CLIENT=127.0.0.1:2389  # not etcd's default 2379, so a local etcd is left alone
ETCD_PEER=127.0.0.1:2390
export POINTSMAN_TOKEN=${POINTSMAN_TOKEN:-demo-token}

work=$(mktemp -d /tmp/pointsman-fleet.XXXXXX)
pids=()
cleanup() {  # the members first (they leave the fleet in etcd), etcd last
    for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
        kill "${pids[i]}" 2>/dev/null || true
        wait "${pids[i]}" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# In its own session, so Ctrl-C reaches it only through cleanup, after the members.
setsid etcd --name fleet --data-dir "$work/etcd" \
    --listen-client-urls "http://$ETCD_CLIENT" --advertise-client-urls "http://$ETCD_CLIENT" \
    --listen-peer-urls "http://$ETCD_PEER" --initial-advertise-peer-urls "http://$ETCD_PEER" \
    --initial-cluster "fleet=http://$ETCD_PEER" --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
    curl -sf "http://$ETCD_CLIENT/health" >/dev/null 2>&1 && break
    sleep 0.1  # etcd offers no readiness signal but /health
done
curl -sf "http://$ETCD_CLIENT/health" >/dev/null || { cat "$work/etcd.log"; exit 1; }

$BIN/python -m control.demo --config config/demo.yaml &
pids+=($!)

# Each member: the demo's routes, its own ports and state copy, the fleet's etcd.
member_config() {  # name listen admin
    sed -e "s/^listen: 127.0.0.1:8080/listen: 127.0.0.1:$2/" \
        -e "s/^  listen: 127.0.0.1:8081/  listen: 127.0.0.1:$3/" config/demo.yaml
    cat <<YAML
state:
  store: etcd
  endpoints: [http://$ETCD_CLIENT]
  prefix: /pointsman/shop
  path: $work/$1.json
YAML
}
member_config a 8080 8081 >"$work/a.yaml"
member_config b 8082 8083 >"$work/b.yaml"
$BIN/pointsman run --config "$work/a.yaml" --workers 1 &
pids+=($!)
$BIN/pointsman run --config "$work/b.yaml" --workers 1 &
pids+=($!)

sed "s/__TOKEN__/$POINTSMAN_TOKEN/" <<'TXT'

A fleet of two: member a on http://127.0.0.1:8080 (admin 8081), member b on :8082 (admin
8083), sharing the routing state in etcd at http://127.0.0.1:2389 under /pointsman/shop.
Try, in another terminal:

  export POINTSMAN_TOKEN=__TOKEN__
  .venv/bin/pointsman --admin http://127.0.0.1:8081 status          # the routes, then the members
  .venv/bin/pointsman --admin http://127.0.0.1:8081 flip shop green --wait-fleet
  curl -s localhost:8082/                                            # member b: green too
  .venv/bin/pointsman --admin http://127.0.0.1:8083 rollback shop   # through b, back on both

Stop with Ctrl-C.

TXT
wait -n "${pids[@]}"
