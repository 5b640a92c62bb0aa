#!/usr/bin/env bash
# Pointsman benchmark harness (`make bench` runs `bash benchmarks/run.sh` from the repo root).
#
# Starts, on 127.0.0.1 only and with ports picked at random:
#   * backend nginx  (1 worker): `return 200 "ok\n"` on /, a sparse test file under /files/
#   * nginx proxy    (1 worker): upstream keepalive 64, HTTP/1.1 to the backend
#   * Pointsman      (`pointsman run --config FILE`, `workers: 1`: one master + one worker)
#   * sink.py        (upload backend: reads and discards request bodies)
# then measures
#   1. req/s, p50, p99 with wrk + sticky.lua: backend direct, nginx proxy, Pointsman
#   2. Pointsman RSS before/while holding N idle keep-alive connections (idle_conns.py)
#   3. Pointsman RSS growth while streaming a 1 GiB response and 1 GiB uploads
#      (Content-Length and chunked) through it
#   4. shadow isolation: Pointsman with no shadow, mirroring 100 % to a shadow answering
#      after 1 s (slow.py) and to a fast shadow (CPU per request); nginx without and with its
#      `mirror` module pointed at the same slow shadow
#   5. workers: nginx proxy with `worker_processes 2`, and with `worker_cpu_affinity auto`
#      too; Pointsman `workers: 2` (one SO_REUSEPORT socket per worker, each worker bound to
#      a CPU: `worker_cpu_affinity: auto`, the default), the same with `worker_cpu_affinity:
#      off`, `workers: 1`, `workers: 2` + `--shared-socket` (more Pointsman instances, started
#      for this phase and kept for all its rounds): req/s,
#      p99, CPU per request (master + workers), the master's CPU share, how the requests and
#      connections spread over the workers; then BENCH_FLIPS flips through the control API
#      while `workers: 2` is under wrk load (API answer latency)
#   6. fleet: a throwaway one-member etcd and two Pointsman members (A and B, `workers: 1`,
#      `state.store: etcd`, one prefix) plus a file-store Pointsman (`workers: 1`): req/s and
#      CPU per request of member A against the file-store instance; then BENCH_FLEET_CHANGES
#      weight changes through A's control API while wrk loads the members (fleet.py), each
#      timed until B's member key in etcd shows the new version
#   7. TLS: nginx (1 worker) and Pointsman (`workers: 1`), both terminating TLS with the same
#      self-signed ECDSA P-256 certificate (generated under the work dir) in front of the same
#      backend: keep-alive req/s and p99, and the new-handshake rate (wrk with
#      `Connection: close`: every request a new TCP and TLS connection). tls_probe.py finds
#      out whether Pointsman lets a client resume a session; the nginx peer is configured to do
#      the same (wrk resumes whenever the server lets it), and the report says which
#   8. access log: Pointsman `workers: 1` with `access_log: {path: <work>/alog/.../access.log}`
#      against the same without: req/s and CPU per request (master + worker), and the lines
#      the log got during each run against the requests wrk counted
# and writes a Markdown report (report.py) to stdout and benchmarks/RESULTS.md.
#
# Pointsman's CPU time is always that of the master and all its descendants (the workers),
# utime + stime from /proc/PID/stat; its RSS likewise the sum over master and workers.
#
# wrk runs (1, 4, 5, 6, 7 and 8) are repeated in BENCH_ROUNDS rounds. Within a round the
# targets run one right after another; odd rounds in the forward order (backend, nginx,
# pointsman; shadow phases pm_plain, pm_slow, pm_fast, nginx_plain, nginx_mirror; workers
# phases nginx_w2, pm_w2, nginx_w2_bound, pm_w2_unbound, pm_w1, pm_w2_shared; fleet phases
# pm_file, pm_etcd; TLS phases nginx_tls, pm_tls, nginx_tls_close, pm_tls_close; access-log
# phases pm_log_off, pm_log_on),
# even rounds in the reverse order (ABBA), so that a drift in machine speed weighs on both
# sides of each comparison alike. report.py pairs the runs of each round: ratio per round
# (Pointsman / nginx, 1 s shadow / no shadow, etcd store / file store, log on / off, ...), and
# the targets are judged on the median of those ratios.
# Every process started here (and every descendant, e.g. Pointsman's workers, which run in
# sessions of their own) is killed on exit, error, Ctrl-C or after BENCH_TIMEOUT.
#
# Environment (defaults in brackets):
#   BENCH_SECONDS [10]        wrk duration per target        BENCH_WARMUP [2]   warm-up seconds
#   BENCH_THREADS [2]         wrk -t                          BENCH_CONNS [50]   wrk -c
#   BENCH_ROUNDS [5]          rounds of every wrk run, order alternating (see above); the
#                             targets use the median of the per-round ratios
#   BENCH_WORKERS_ROUNDS [9]  rounds of phase 5 (workers): its p99 ratio against nginx swings
#                             0.56-2.91 per round on 2 shared CPUs, so its median needs more
#   BENCH_IDLE_CONNS [10000]  idle connections                BENCH_IDLE_HOLD [5] seconds held
#   BENCH_STREAM_SIZE [1G]    size of the streamed file (truncate -s syntax, 1G = 1 GiB)
#   BENCH_STREAM_TIMEOUT [180] max seconds per streaming transfer
#   BENCH_SAMPLE_INTERVAL [0.2] RSS sampling interval
#   BENCH_UPLOAD_VIA [direct] `direct`: Pointsman route /upload/ -> sink.py;
#                             `nginx`: no extra route, backend nginx relays /upload/ to sink.py
#   BENCH_SKIP_WRK=1  BENCH_SKIP_MEMORY=1  BENCH_SKIP_IDLE=1  BENCH_SKIP_STREAM=1
#   BENCH_SKIP_SHADOW=1       BENCH_SHADOW_DELAY [1.0] seconds the slow shadow takes
#   BENCH_SKIP_WORKERS=1      skip phase 5 (workers; needs wrk, not run with the stand-in)
#   BENCH_FLIPS [50]          flips under load at the end of phase 5 (0 = none)
#   BENCH_SKIP_FLEET=1        skip phase 6 (fleet; needs wrk and etcd, not with the stand-in)
#   BENCH_FLEET_CHANGES [200] weight changes through member A in phase 6 (0 = none)
#   BENCH_FLEET_LOAD [both]   which members wrk loads during those changes: a, b or both
#   BENCH_SKIP_TLS=1          skip phase 7 (TLS; needs wrk, openssl, nginx's ssl module and a
#                             Pointsman that accepts a TLS listener; not with the stand-in)
#   BENCH_SKIP_ACCESS_LOG=1   skip phase 8 (access log; needs wrk and a Pointsman that accepts
#                             `access_log`; not with the stand-in)
#   BENCH_STRICT=1            exit 3 if a target fails
#   BENCH_START_TIMEOUT [20]  seconds to wait for each server to answer
#   BENCH_TIMEOUT [2400]      hard limit for the whole run (a default run takes ~27 min)
#   BENCH_WORKDIR [benchmarks/work]   BENCH_RESULTS_MD [benchmarks/RESULTS.md]
#   PYTHON [.venv/bin/python]
#   POINTSMAN_CMD [".venv/bin/pointsman run --config {config}"]
#                             placeholders: {config} {port} {admin_port} {workdir} {args};
#                             {args} is "--shared-socket" for that workers instance and empty
#                             otherwise (appended at the end when the command lacks {args});
#                             the worker count is in the config (`workers: N`).
#                             POINTSMAN_CMD=nginx-standin runs a single-process nginx in
#                             Pointsman's place (to test the harness before Pointsman exists)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR=$ROOT/benchmarks
cd "$ROOT"

BENCH_SECONDS=${BENCH_SECONDS:-10}
BENCH_WARMUP=${BENCH_WARMUP:-2}
BENCH_THREADS=${BENCH_THREADS:-2}
BENCH_CONNS=${BENCH_CONNS:-50}
BENCH_ROUNDS=${BENCH_ROUNDS:-5}
BENCH_WORKERS_ROUNDS=${BENCH_WORKERS_ROUNDS:-9}
BENCH_IDLE_CONNS=${BENCH_IDLE_CONNS:-10000}
BENCH_IDLE_HOLD=${BENCH_IDLE_HOLD:-5}
BENCH_STREAM_SIZE=${BENCH_STREAM_SIZE:-1G}
BENCH_STREAM_TIMEOUT=${BENCH_STREAM_TIMEOUT:-180}
BENCH_SAMPLE_INTERVAL=${BENCH_SAMPLE_INTERVAL:-0.2}
BENCH_UPLOAD_VIA=${BENCH_UPLOAD_VIA:-direct}
BENCH_SKIP_WRK=${BENCH_SKIP_WRK:-0}
BENCH_SKIP_MEMORY=${BENCH_SKIP_MEMORY:-0}
BENCH_SKIP_IDLE=${BENCH_SKIP_IDLE:-$BENCH_SKIP_MEMORY}
BENCH_SKIP_STREAM=${BENCH_SKIP_STREAM:-$BENCH_SKIP_MEMORY}
BENCH_SKIP_SHADOW=${BENCH_SKIP_SHADOW:-0}
BENCH_SHADOW_DELAY=${BENCH_SHADOW_DELAY:-1.0}
BENCH_SKIP_WORKERS=${BENCH_SKIP_WORKERS:-0}
BENCH_FLIPS=${BENCH_FLIPS:-50}
BENCH_SKIP_FLEET=${BENCH_SKIP_FLEET:-0}
BENCH_FLEET_CHANGES=${BENCH_FLEET_CHANGES:-200}
BENCH_FLEET_LOAD=${BENCH_FLEET_LOAD:-both}
BENCH_SKIP_TLS=${BENCH_SKIP_TLS:-0}
BENCH_SKIP_ACCESS_LOG=${BENCH_SKIP_ACCESS_LOG:-0}
BENCH_STRICT=${BENCH_STRICT:-0}
BENCH_START_TIMEOUT=${BENCH_START_TIMEOUT:-20}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-2400}
WORK=${BENCH_WORKDIR:-$BENCH_DIR/work}
RESULTS_MD=${BENCH_RESULTS_MD:-$BENCH_DIR/RESULTS.md}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
DEFAULT_POINTSMAN_CMD="$ROOT/.venv/bin/pointsman run --config {config}"
POINTSMAN_CMD=${POINTSMAN_CMD:-$DEFAULT_POINTSMAN_CMD}

log() { printf '==> %s\n' "$*" >&2; }
warn() { printf 'WARNING: %s\n' "$*" >&2; }
die() {
    printf 'ERROR: %s\n' "$*" >&2
    exit 1
}

for var in BENCH_SECONDS BENCH_WARMUP BENCH_THREADS BENCH_CONNS BENCH_ROUNDS \
    BENCH_WORKERS_ROUNDS BENCH_IDLE_CONNS \
    BENCH_STREAM_TIMEOUT BENCH_START_TIMEOUT BENCH_TIMEOUT BENCH_FLIPS BENCH_FLEET_CHANGES; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "$var must be a whole number, got '${!var}'"
done
[[ $BENCH_IDLE_HOLD =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "BENCH_IDLE_HOLD must be a number"
[[ $BENCH_SAMPLE_INTERVAL =~ ^[0-9]*\.?[0-9]+$ ]] || die "BENCH_SAMPLE_INTERVAL must be a number"
[[ $BENCH_UPLOAD_VIA == direct || $BENCH_UPLOAD_VIA == nginx ]] ||
    die "BENCH_UPLOAD_VIA must be 'direct' or 'nginx'"
[[ $BENCH_FLEET_LOAD == a || $BENCH_FLEET_LOAD == b || $BENCH_FLEET_LOAD == both ]] ||
    die "BENCH_FLEET_LOAD must be 'a', 'b' or 'both'"
((BENCH_SECONDS >= 1 && BENCH_ROUNDS >= 1 && BENCH_WORKERS_ROUNDS >= 1 &&
    BENCH_CONNS >= BENCH_THREADS)) ||
    die "need BENCH_SECONDS >= 1, BENCH_ROUNDS >= 1, BENCH_WORKERS_ROUNDS >= 1 and" \
        "BENCH_CONNS >= BENCH_THREADS"

# Expected duration: each wrk run costs warm-up + run + ~0.3 s (measured: ~0.2 s for wrk's
# start-up, the log line and the control API calls), 3 targets and 5 shadow phases per round
# (counted for the stand-in too, which skips them), 6 workers phases per round at ~0.5 s
# (measured: ~0.35 s with the /metrics scrapes around them) plus ~5 s to start and stop that
# phase's servers and the flip run (BENCH_SECONDS + 1 s); the fleet phase's 2 runs per round
# at ~0.5 s (measured: ~0.35 s), ~FLEET_SETUP s to start and stop etcd and its three Pointsman
# instances (measured: 2.7 s) and the propagation run (warm-up + BENCH_SECONDS + ~2 s); up to
# ~90 s for the memory tests, ~10 s to start the servers; the TLS phase's 4 runs per round at
# ~0.5 s and ~TLS_SETUP s for the certificate, its two servers and the resumption probes; the
# access-log phase's 2 runs per round at ~0.5 s, ~ALOG_SETTLE_MS twice per round waiting for
# the log's last batch, and ~ALOG_SETUP s to start and stop its two servers. At the defaults:
# 5 x (8 x 12.3 s + 2 x 12.5 s + 4 x 12.5 s + 2 x 12.5 s + 3 s) + 9 x 6 x 12.5 s + 16 s
# + 18 s + 6 s + 4 s + 100 s, about 31 minutes; each round adds about 200 s, each workers
# round 75 s.
FLEET_SETUP=4
TLS_SETUP=6
ALOG_SETUP=4
ALOG_SETTLE_MS=1000 # how long the access log must keep its size to count as written out
wrk_runs=0
workers_runs=0
fleet_runs=0
tls_runs=0
alog_runs=0
if [[ $BENCH_SKIP_WRK != 1 ]]; then
    wrk_runs=$((BENCH_SKIP_SHADOW == 1 ? 3 : 8))
    [[ $BENCH_SKIP_WORKERS == 1 ]] || workers_runs=6
    [[ $BENCH_SKIP_FLEET == 1 ]] || fleet_runs=2
    [[ $BENCH_SKIP_TLS == 1 ]] || tls_runs=4
    [[ $BENCH_SKIP_ACCESS_LOG == 1 ]] || alog_runs=2
fi
expected=$((BENCH_ROUNDS * wrk_runs * (10 * (BENCH_WARMUP + BENCH_SECONDS) + 3) / 10 + 10))
if ((workers_runs)); then
    per_run=$((10 * (BENCH_WARMUP + BENCH_SECONDS) + 5)) # tenths of a second
    expected=$((expected + BENCH_WORKERS_ROUNDS * workers_runs * per_run / 10 + 5))
    ((BENCH_FLIPS == 0)) || expected=$((expected + BENCH_SECONDS + 1))
fi
if ((fleet_runs)); then
    per_run=$((10 * (BENCH_WARMUP + BENCH_SECONDS) + 5))
    expected=$((expected + BENCH_ROUNDS * fleet_runs * per_run / 10 + FLEET_SETUP))
    ((BENCH_FLEET_CHANGES == 0)) ||
        expected=$((expected + BENCH_WARMUP + BENCH_SECONDS + 2))
fi
if ((tls_runs)); then
    per_run=$((10 * (BENCH_WARMUP + BENCH_SECONDS) + 5))
    expected=$((expected + BENCH_ROUNDS * tls_runs * per_run / 10 + TLS_SETUP))
fi
if ((alog_runs)); then
    per_run=$((10 * (BENCH_WARMUP + BENCH_SECONDS) + 5))
    expected=$((expected + BENCH_ROUNDS * (alog_runs * per_run + 30) / 10 + ALOG_SETUP))
fi
[[ $BENCH_SKIP_IDLE == 1 && $BENCH_SKIP_STREAM == 1 ]] || expected=$((expected + 90))

# --------------------------------------------------------------------------- tools

find_bin() { # name -> path (also looks in sbin dirs, which are not on PATH for non-root users)
    local p
    p=$(command -v "$1" 2>/dev/null) && { echo "$p"; return 0; }
    for p in "/usr/sbin/$1" "/usr/local/sbin/$1" "/sbin/$1"; do
        [[ -x $p ]] && { echo "$p"; return 0; }
    done
    return 1
}

NGINX_BIN=$(find_bin nginx || true)
WRK_BIN=$(find_bin wrk || true)
CURL_BIN=$(find_bin curl || true)
ETCD_BIN=$(find_bin etcd || true)
OPENSSL_BIN=$(find_bin openssl || true)
missing=()
[[ -n $NGINX_BIN ]] || missing+=(nginx-light)
[[ -n $WRK_BIN ]] || missing+=(wrk)
[[ -n $CURL_BIN ]] || missing+=(curl)
if ((${#missing[@]})); then
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
        log "installing missing packages: ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get install -y "${missing[@]}" ||
            { apt-get update && apt-get install -y "${missing[@]}"; } ||
            die "apt-get install ${missing[*]} failed"
        NGINX_BIN=$(find_bin nginx || true)
        WRK_BIN=$(find_bin wrk || true)
        CURL_BIN=$(find_bin curl || true)
        [[ -n $NGINX_BIN && -n $WRK_BIN && -n $CURL_BIN ]] || die "still missing after install"
    else
        die "missing: ${missing[*]} (install them, e.g. as root: apt-get install -y ${missing[*]})"
    fi
fi
# etcd only for the fleet phase: installed when possible, else that phase is skipped.
if [[ -z $ETCD_BIN && $BENCH_SKIP_FLEET != 1 && $BENCH_SKIP_WRK != 1 ]] &&
    command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    log "installing etcd-server for the fleet phase"
    DEBIAN_FRONTEND=noninteractive apt-get install -y etcd-server ||
        warn "apt-get install etcd-server failed"
    ETCD_BIN=$(find_bin etcd || true)
fi
command -v timeout >/dev/null || die "missing: timeout (coreutils)"
command -v setsid >/dev/null || die "missing: setsid (util-linux)"
command -v truncate >/dev/null || die "missing: truncate (coreutils)"
if [[ ! -x $PYTHON ]]; then
    warn "$PYTHON not found, using python3 from PATH"
    PYTHON=$(command -v python3) || die "no python3"
fi

# --------------------------------------------------------------------------- limits

ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
[[ $NOFILE == unlimited ]] && NOFILE=1048576
log "open-files limit: $NOFILE"
log "expected duration: about $(((expected + 59) / 60)) min (limit BENCH_TIMEOUT=${BENCH_TIMEOUT}s)"
((expected <= BENCH_TIMEOUT)) ||
    warn "BENCH_TIMEOUT=${BENCH_TIMEOUT}s is below the expected ${expected}s: raise it"
if ((BENCH_SKIP_IDLE != 1 && NOFILE < BENCH_IDLE_CONNS + 512)); then
    warn "open-files limit $NOFILE is low for $BENCH_IDLE_CONNS idle connections"
fi
NGX_CONNS=$((NOFILE > 40000 ? 32768 : NOFILE - 256))

# --------------------------------------------------------------------------- processes

PIDS=()      # process group leaders we started (each via setsid)
WATCHDOG=""

CHILD_PIDS=()
child_pids() { # pid -> CHILD_PIDS: its direct children
    local f kids found=0
    CHILD_PIDS=()
    for f in /proc/"$1"/task/*/children; do
        [[ -r $f ]] || continue
        found=1
        kids=()
        read -r -a kids 2>/dev/null <"$f" || true
        CHILD_PIDS+=("${kids[@]}")
    done
    # /proc/PID/task/TID/children needs CONFIG_PROC_CHILDREN; without it, pgrep -P (which
    # reads every process's parent from /proc).
    if ((!found)); then
        read -r -a CHILD_PIDS < <(pgrep -d ' ' -P "$1" 2>/dev/null || true) || true
    fi
}

TREE_PIDS=()
add_tree_pids() { # pid : appends pid and its descendants to TREE_PIDS
    local k kids
    [[ -d /proc/$1 ]] || return 0
    TREE_PIDS+=("$1")
    child_pids "$1"
    kids=("${CHILD_PIDS[@]}")
    for k in "${kids[@]}"; do add_tree_pids "$k"; done
}
tree_pids() { # pid... -> TREE_PIDS: these processes and all their descendants
    local pid
    TREE_PIDS=()
    for pid in "$@"; do add_tree_pids "$pid"; done
}

stop_pids() { # pid... : TERM to each process group, KILL after 5 s; then the descendants
    # that run in sessions of their own (Pointsman's workers), by pid
    local pid i any
    tree_pids "$@"
    local tree=("${TREE_PIDS[@]}")
    for pid in "$@"; do
        kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    done
    for ((i = 0; i < 50; i++)); do
        any=0
        for pid in "$@"; do
            kill -0 -- "-$pid" 2>/dev/null && any=1
        done
        ((any)) || break
        sleep 0.1
    done
    if ((any)); then
        for pid in "$@"; do
            kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        done
    fi
    # A master that stops drains its workers; what is left after it is gone is stray.
    any=0
    for pid in "${tree[@]}"; do
        alive "$pid" && kill -TERM "$pid" 2>/dev/null && any=1
    done
    ((any)) || return 0
    for ((i = 0; i < 30; i++)); do
        any=0
        for pid in "${tree[@]}"; do alive "$pid" && any=1; done
        ((any)) || return 0
        sleep 0.1
    done
    for pid in "${tree[@]}"; do
        alive "$pid" && { kill -KILL "$pid" 2>/dev/null || true; }
    done
    return 0
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $WATCHDOG ]]; then
        kill -TERM -- "-$WATCHDOG" 2>/dev/null || true
    fi
    if ((${#PIDS[@]})); then
        log "stopping ${#PIDS[@]} processes"
        stop_pids "${PIDS[@]}"
    fi
    wait 2>/dev/null || true
    exit "$rc"
}
trap cleanup EXIT
trap 'warn "interrupted"; exit 130' INT
trap 'warn "terminated (BENCH_TIMEOUT=${BENCH_TIMEOUT}s reached or killed)"; exit 143' TERM

# Hard time limit for the whole run: a separate session sleeping, then TERM to this script.
setsid bash -c "sleep $BENCH_TIMEOUT; kill -TERM $$" </dev/null >/dev/null 2>&1 &
WATCHDOG=$!

LAST_PID=""
start_bg() { # logfile cmd... : start in its own session; pid in LAST_PID
    local logfile=$1
    shift
    setsid "$@" </dev/null >"$logfile" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

alive() { # pid -> running and not a zombie
    local st=""
    [[ -r /proc/$1/stat ]] || return 1
    read -r _ _ st _ 2>/dev/null <"/proc/$1/stat" || return 1
    [[ $st != Z ]]
}

forget_pid() { # pid : no longer needs killing at exit
    local p keep=()
    for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

wait_http() { # name url pid logfile: poll until it answers with 2xx, bounded
    local name=$1 url=$2 pid=$3 logfile=$4
    local deadline=$((SECONDS + BENCH_START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! alive "$pid"; then
            warn "$name exited during start-up; last lines of $logfile:"
            tail -n 30 "$logfile" >&2 || true
            return 1
        fi
        if "$CURL_BIN" -fsSk -o /dev/null --max-time 1 "$url" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    warn "$name did not answer $url within ${BENCH_START_TIMEOUT}s; last lines of $logfile:"
    tail -n 30 "$logfile" >&2 || true
    return 1
}

RSS_KIB=0
add_tree_rss() { # pid : adds VmRSS of pid and its descendants to RSS_KIB
    local key val _unit kids k
    [[ -r /proc/$1/status ]] || return 0
    while read -r key val _unit; do
        if [[ $key == VmRSS: ]]; then
            RSS_KIB=$((RSS_KIB + val))
            break
        fi
    done 2>/dev/null <"/proc/$1/status" || true
    child_pids "$1"
    kids=("${CHILD_PIDS[@]}")
    for k in "${kids[@]}"; do add_tree_rss "$k"; done
}
rss_kib() { # pid -> RSS_KIB (process and its children)
    RSS_KIB=0
    add_tree_rss "$1"
}

SAMPLE_PEAK=0
SAMPLE_COUNT=0
sample_while() { # target_pid watch_pid : sample target's RSS until watch_pid exits
    SAMPLE_PEAK=0
    SAMPLE_COUNT=0
    while alive "$2"; do
        rss_kib "$1"
        ((RSS_KIB > SAMPLE_PEAK)) && SAMPLE_PEAK=$RSS_KIB
        SAMPLE_COUNT=$((SAMPLE_COUNT + 1))
        sleep "$BENCH_SAMPLE_INTERVAL"
    done
    rss_kib "$1"
    ((RSS_KIB > SAMPLE_PEAK)) && SAMPLE_PEAK=$RSS_KIB
    SAMPLE_COUNT=$((SAMPLE_COUNT + 1))
}

# --------------------------------------------------------------------------- work dir

RESULTS=$WORK/results
mkdir -p "$WORK"
rm -rf "$RESULTS" "$WORK"/backend "$WORK"/nginx-proxy "$WORK"/nginx-mirror "$WORK"/pointsman \
    "$WORK"/workers "$WORK"/fleet "$WORK"/tls "$WORK"/alog
mkdir -p "$RESULTS" "$WORK"/{backend,nginx-proxy,nginx-mirror,pointsman}/tmp "$WORK/files" \
    "$WORK"/workers/{nginx_w2/tmp,nginx_w2_bound/tmp,pm_w2,pm_w2_unbound,pm_w1,pm_w2_shared} \
    "$WORK"/fleet/{pm_file,pm_a,pm_b} \
    "$WORK"/tls/{nginx_tls/tmp,pm_tls} "$WORK"/alog/{pm_log_off,pm_log_on}
# nginx workers may run as an unprivileged user: the served file must be readable for them
chmod 755 "$WORK" "$WORK/files"

read -r P_BACKEND P_NGINX P_PM P_ADMIN P_SINK P_SLOW P_MIRROR P_NGINX_W2 P_PM_W2 P_ADMIN_W2 \
    P_PM_W1 P_ADMIN_W1 P_PM_W2S P_ADMIN_W2S P_ETCD P_ETCD_PEER P_PM_FF P_ADMIN_FF P_PM_FA \
    P_ADMIN_FA P_PM_FB P_ADMIN_FB P_NGINX_TLS P_PM_TLS P_ADMIN_TLS P_PM_LOFF P_ADMIN_LOFF P_PM_LON \
    P_ADMIN_LON P_NGINX_W2B P_PM_W2U P_ADMIN_W2U < <(
    "$PYTHON" - <<'EOF'
import socket
socks = []
for _ in range(32):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)
log "ports: backend $P_BACKEND, nginx proxy $P_NGINX, pointsman $P_PM (admin $P_ADMIN)," \
    "sink $P_SINK, slow shadow $P_SLOW, nginx mirror $P_MIRROR; workers phase: nginx" \
    "$P_NGINX_W2 (bound to CPUs $P_NGINX_W2B), pointsman workers:2 $P_PM_W2 (admin" \
    "$P_ADMIN_W2; unbound $P_PM_W2U, admin $P_ADMIN_W2U), workers:1 $P_PM_W1" \
    "(admin $P_ADMIN_W1), workers:2 shared socket $P_PM_W2S (admin $P_ADMIN_W2S); fleet" \
    "phase: etcd $P_ETCD (peer $P_ETCD_PEER), file store $P_PM_FF (admin $P_ADMIN_FF)," \
    "member A $P_PM_FA (admin $P_ADMIN_FA), member B $P_PM_FB (admin $P_ADMIN_FB); TLS phase:" \
    "nginx $P_NGINX_TLS, pointsman $P_PM_TLS (admin $P_ADMIN_TLS); access-log phase: log off" \
    "$P_PM_LOFF (admin $P_ADMIN_LOFF), log on $P_PM_LON (admin $P_ADMIN_LON)"

# Temp paths of every compiled-in module are set explicitly so nothing is created under
# /var/lib/nginx; modules missing from this nginx build are left out (unknown directive).
NGINX_V=$("$NGINX_BIN" -V 2>&1)
nginx_temp_paths() { # dir
    echo "client_body_temp_path $1/tmp/body;"
    echo "proxy_temp_path $1/tmp/proxy;"
    local m
    for m in fastcgi uwsgi scgi; do
        [[ $NGINX_V == *"--without-http_${m}_module"* ]] || echo "${m}_temp_path $1/tmp/$m;"
    done
}

nginx_head() { # dir [extra main-context lines] [worker processes, default 1]
    cat <<EOF
# generated by benchmarks/run.sh
worker_processes ${3:-1};
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile $NOFILE;
${2:-}
events { worker_connections $NGX_CONNS; }
EOF
}

nginx_http_common() { # dir
    cat <<EOF
    access_log off;
    $(nginx_temp_paths "$1")
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 300s;
    keepalive_requests 1000000;
EOF
}

# Backend: fast "ok", the big file, and (BENCH_UPLOAD_VIA=nginx) an unbuffered relay to sink.py.
cat >"$WORK/backend/nginx.conf" <<EOF
$(nginx_head "$WORK/backend")
http {
$(nginx_http_common "$WORK/backend")
    upstream sink {
        server 127.0.0.1:$P_SINK;
        keepalive 8;
    }
    server {
        listen 127.0.0.1:$P_BACKEND backlog=4096;
        client_max_body_size 0;
        location / {
            default_type text/plain;
            return 200 "ok\n";
        }
        location /files/ {
            alias $WORK/files/;
        }
        location /upload/ {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
    }
}
EOF

# Reverse-proxy nginx: the reference Pointsman is compared with; with 1 worker (phases 1 and
# 4) and with 2 (workers phase), otherwise the same.
nginx_proxy_conf() { # dir port worker_processes [extra main-context lines]
    cat <<EOF
$(nginx_head "$1" "${4:-}" "$3")
http {
$(nginx_http_common "$1")
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$2 backlog=4096;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
}
nginx_proxy_conf "$WORK/nginx-proxy" "$P_NGINX" 1 >"$WORK/nginx-proxy/nginx.conf"
nginx_proxy_conf "$WORK/workers/nginx_w2" "$P_NGINX_W2" 2 >"$WORK/workers/nginx_w2/nginx.conf"
# nginx's own binding of each worker to a CPU, the peer of Pointsman's worker_cpu_affinity.
nginx_proxy_conf "$WORK/workers/nginx_w2_bound" "$P_NGINX_W2B" 2 "worker_cpu_affinity auto;" \
    >"$WORK/workers/nginx_w2_bound/nginx.conf"

# nginx with its mirror module copying every request to the slow shadow (the peer Pointsman's
# shadow isolation is measured against).
cat >"$WORK/nginx-mirror/nginx.conf" <<EOF
$(nginx_head "$WORK/nginx-mirror")
http {
$(nginx_http_common "$WORK/nginx-mirror")
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    upstream slow {
        server 127.0.0.1:$P_SLOW;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$P_MIRROR backlog=4096;
        location / {
            mirror /__mirror;
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
        location = /__mirror {
            internal;
            proxy_pass http://slow\$request_uri;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 5s;
        }
    }
}
EOF

# Pointsman config: the same for every instance but for the ports, the number of workers and
# where it keeps its state.
PM_CONFIG=$WORK/pointsman/pointsman.yaml
# Shadows are added and removed (and flips made) through the control API, which needs a token
# for changes.
export POINTSMAN_TOKEN=${POINTSMAN_TOKEN:-bench-$RANDOM$RANDOM}
pm_config() { # port admin_port workers state_dir [store settings, "key: value, " each]
    # [more top-level lines]; port is a port number, or else the YAML value of `listen`
    echo "# generated by benchmarks/run.sh"
    if [[ $1 =~ ^[0-9]+$ ]]; then
        echo "listen: 127.0.0.1:$1"
    else
        echo "listen: $1"
    fi
    echo "admin: {listen: 127.0.0.1:$2}"
    echo "workers: $3                              # data-plane processes beside the master"
    echo "limits: {max_body_bytes: 0}        # 0 = no body limit (needed for the 1 GiB upload)"
    echo "state: {${5:-}path: $4/state.json}   # keep run-time state out of the repo"
    [[ -z ${6:-} ]] || echo "$6"
    echo "routes:"
    if [[ $BENCH_UPLOAD_VIA == direct ]]; then
        cat <<EOF
  - name: upload                          # 1 GiB upload test -> benchmarks/sink.py
    hosts: ["*"]
    path_prefix: /upload/
    pools:
      blue: {endpoints: ["127.0.0.1:$P_SINK"]}
    weights: {blue: 100}
EOF
    fi
    cat <<EOF
  - name: shop
    hosts: ["*"]
    path_prefix: /
    pools:
      blue:  {endpoints: ["127.0.0.1:$P_BACKEND"]}
      green: {endpoints: ["127.0.0.1:$P_BACKEND"]}
      fast:  {endpoints: ["127.0.0.1:$P_BACKEND"]}   # a fast shadow (same backend)
      dark:  {endpoints: ["127.0.0.1:$P_SLOW"]}      # a shadow answering after BENCH_SHADOW_DELAY
    weights: {blue: 90, green: 10}
    sticky: {header: X-User-Id, cookie: user_id}
    rules:
      - header: {X-Pointsman-Pool: green}
        pool: green
EOF
}
# Phases 1-4 compare with one nginx worker: one Pointsman worker (and its master) likewise.
pm_config "$P_PM" "$P_ADMIN" 1 "$WORK/pointsman" >"$PM_CONFIG"
pm_config "$P_PM_W2" "$P_ADMIN_W2" 2 "$WORK/workers/pm_w2" >"$WORK/workers/pm_w2/pointsman.yaml"
pm_config "$P_PM_W2U" "$P_ADMIN_W2U" 2 "$WORK/workers/pm_w2_unbound" "" \
    "worker_cpu_affinity: off                # each worker left to the scheduler" \
    >"$WORK/workers/pm_w2_unbound/pointsman.yaml"
pm_config "$P_PM_W1" "$P_ADMIN_W1" 1 "$WORK/workers/pm_w1" >"$WORK/workers/pm_w1/pointsman.yaml"
pm_config "$P_PM_W2S" "$P_ADMIN_W2S" 2 "$WORK/workers/pm_w2_shared" \
    >"$WORK/workers/pm_w2_shared/pointsman.yaml"
# The fleet phase: a file-store instance, and members A and B of one fleet in the phase's etcd.
FLEET_PREFIX=/pointsman/bench
FLEET_STORE="store: etcd, endpoints: [\"http://127.0.0.1:$P_ETCD\"], prefix: $FLEET_PREFIX, "
pm_config "$P_PM_FF" "$P_ADMIN_FF" 1 "$WORK/fleet/pm_file" >"$WORK/fleet/pm_file/pointsman.yaml"
pm_config "$P_PM_FA" "$P_ADMIN_FA" 1 "$WORK/fleet/pm_a" "$FLEET_STORE" \
    >"$WORK/fleet/pm_a/pointsman.yaml"
pm_config "$P_PM_FB" "$P_ADMIN_FB" 1 "$WORK/fleet/pm_b" "$FLEET_STORE" \
    >"$WORK/fleet/pm_b/pointsman.yaml"
# The TLS phase: one TLS listener, the certificate generated below (run.sh writes the nginx peer's
# config once it knows whether Pointsman resumes sessions).
TLS_CERT=$WORK/tls/server.pem
TLS_KEY=$WORK/tls/server.key
pm_config "[{address: 127.0.0.1:$P_PM_TLS, tls: {cert: $TLS_CERT, key: $TLS_KEY}}]" \
    "$P_ADMIN_TLS" 1 "$WORK/tls/pm_tls" >"$WORK/tls/pm_tls/pointsman.yaml"
# The access-log phase: the same instance without and with an access log (every request).
ALOG_FILE=$WORK/alog/pm_log_on/access.log
pm_config "$P_PM_LOFF" "$P_ADMIN_LOFF" 1 "$WORK/alog/pm_log_off" >"$WORK/alog/pm_log_off/pointsman.yaml"
pm_config "$P_PM_LON" "$P_ADMIN_LON" 1 "$WORK/alog/pm_log_on" "" "access_log: {path: $ALOG_FILE}" \
    >"$WORK/alog/pm_log_on/pointsman.yaml"

PM_CMD=""
PM_ARGV=()
pm_argv() { # config port admin_port extra-args -> PM_CMD (the command line), PM_ARGV
    local cmd=$POINTSMAN_CMD
    cmd=${cmd//\{config\}/$1}
    cmd=${cmd//\{port\}/$2}
    cmd=${cmd//\{admin_port\}/$3}
    cmd=${cmd//\{workdir\}/$WORK}
    if [[ $cmd == *"{args}"* ]]; then
        cmd=${cmd//\{args\}/$4}
    elif [[ -n $4 ]]; then
        cmd="$cmd $4"
    fi
    PM_CMD=$cmd
    PM_ARGV=(bash -c "exec $cmd")
}

PM_LABEL=""
if [[ $POINTSMAN_CMD == nginx-standin ]]; then
    # Single-process nginx in Pointsman's place, with the same ports and the same behaviour
    # the harness relies on: streaming both ways, no body limit, /healthz + /metrics on admin.
    PM_LABEL="nginx stand-in"
    upload_location=""
    if [[ $BENCH_UPLOAD_VIA == direct ]]; then
        upload_location="location /upload/ {
            proxy_pass http://sink;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_request_buffering off;
            proxy_buffering off;
        }"
    fi
    cat >"$WORK/pointsman/nginx.conf" <<EOF
$(nginx_head "$WORK/pointsman" "master_process off;")
http {
$(nginx_http_common "$WORK/pointsman")
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    upstream sink {
        server 127.0.0.1:$P_SINK;
        keepalive 8;
    }
    server {
        listen 127.0.0.1:$P_PM backlog=4096;
        client_max_body_size 0;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_request_buffering off;
            proxy_buffering off;
        }
        $upload_location
    }
    server {
        listen 127.0.0.1:$P_ADMIN;
        location = /healthz { return 200 "ok\n"; }
        location = /metrics { return 200 "# stand-in\n"; }
        location / { return 404; }
    }
}
EOF
    PM_CMD_DISPLAY="nginx -c $WORK/pointsman/nginx.conf (master_process off)"
    PM_ARGV=("$NGINX_BIN" -p "$WORK/pointsman" -c "$WORK/pointsman/nginx.conf" -e "$WORK/pointsman/error.log")
else
    pm_argv "$PM_CONFIG" "$P_PM" "$P_ADMIN" ""
    read -r -a first <<<"$PM_CMD"
    if ! command -v "${first[0]}" >/dev/null 2>&1; then
        die "Pointsman command not found: ${first[0]} (is the venv set up? 'make bench' needs it).
       To test the harness without Pointsman: POINTSMAN_CMD=nginx-standin bash benchmarks/run.sh"
    fi
    PM_CMD_DISPLAY=${PM_CMD//"$ROOT/"/}
fi

# The file streamed through the proxy: sparse, so it costs no disk space.
BIG=$WORK/files/big.bin
if [[ $BENCH_SKIP_STREAM != 1 ]]; then
    truncate -s "$BENCH_STREAM_SIZE" "$BIG.tmp" && mv -f "$BIG.tmp" "$BIG"
    chmod 644 "$BIG"
    STREAM_BYTES=$(stat -c %s "$BIG")
else
    STREAM_BYTES=0
fi

# The workers phase needs wrk and Pointsman itself (the stand-in has no workers).
WORKERS_SKIPPED=""
if [[ $BENCH_SKIP_WORKERS == 1 ]]; then
    WORKERS_SKIPPED="BENCH_SKIP_WORKERS=1"
elif [[ $BENCH_SKIP_WRK == 1 ]]; then
    WORKERS_SKIPPED="BENCH_SKIP_WRK=1"
elif [[ -n $PM_LABEL ]]; then
    WORKERS_SKIPPED="the $PM_LABEL has no workers"
fi
# The fleet phase needs wrk, etcd and Pointsman itself (the stand-in has no etcd store).
FLEET_SKIPPED=""
if [[ $BENCH_SKIP_FLEET == 1 ]]; then
    FLEET_SKIPPED="BENCH_SKIP_FLEET=1"
elif [[ $BENCH_SKIP_WRK == 1 ]]; then
    FLEET_SKIPPED="BENCH_SKIP_WRK=1"
elif [[ -n $PM_LABEL ]]; then
    FLEET_SKIPPED="the $PM_LABEL has no etcd store"
elif [[ -z $ETCD_BIN ]]; then
    FLEET_SKIPPED="etcd is not installed (apt-get install etcd-server)"
fi
pm_check() { # config : `pointsman check` accepts it (always true with another POINTSMAN_CMD);
    # PM_CHECK_OUT: the first line of what it printed
    local out rc=0
    PM_CHECK_OUT=""
    [[ $POINTSMAN_CMD == "$DEFAULT_POINTSMAN_CMD" ]] || return 0
    out=$("$ROOT/.venv/bin/pointsman" check --config "$1" 2>&1) || rc=$?
    PM_CHECK_OUT=${out%%$'\n'*}
    PM_CHECK_OUT=${PM_CHECK_OUT//"$WORK/"/}
    return "$rc"
}
# The TLS phase needs wrk, openssl, nginx's ssl module and Pointsman itself with TLS listeners.
TLS_SKIPPED=""
TLS_CERT_KIND="ECDSA P-256 (prime256v1), self-signed, SHA-256"
if [[ $BENCH_SKIP_TLS == 1 ]]; then
    TLS_SKIPPED="BENCH_SKIP_TLS=1"
elif [[ $BENCH_SKIP_WRK == 1 ]]; then
    TLS_SKIPPED="BENCH_SKIP_WRK=1"
elif [[ -n $PM_LABEL ]]; then
    TLS_SKIPPED="the $PM_LABEL has no TLS listener"
elif [[ -z $OPENSSL_BIN ]]; then
    TLS_SKIPPED="openssl is not installed"
elif [[ $NGINX_V != *--with-http_ssl_module* ]]; then
    TLS_SKIPPED="this nginx has no ssl module"
elif ! "$OPENSSL_BIN" req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -sha256 -nodes \
    -days 2 -subj /CN=localhost -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
    -keyout "$TLS_KEY" -out "$TLS_CERT" >"$WORK/tls/openssl.log" 2>&1; then
    TLS_SKIPPED="openssl could not make a certificate (see work/tls/openssl.log)"
elif ! pm_check "$WORK/tls/pm_tls/pointsman.yaml"; then
    TLS_SKIPPED="pointsman check refuses a TLS listener: $PM_CHECK_OUT"
fi
[[ -z $TLS_SKIPPED ]] || log "TLS phase skipped: $TLS_SKIPPED"
# The access-log phase needs wrk and Pointsman itself with an access log.
ALOG_SKIPPED=""
if [[ $BENCH_SKIP_ACCESS_LOG == 1 ]]; then
    ALOG_SKIPPED="BENCH_SKIP_ACCESS_LOG=1"
elif [[ $BENCH_SKIP_WRK == 1 ]]; then
    ALOG_SKIPPED="BENCH_SKIP_WRK=1"
elif [[ -n $PM_LABEL ]]; then
    ALOG_SKIPPED="the $PM_LABEL has no access log"
elif ! pm_check "$WORK/alog/pm_log_on/pointsman.yaml"; then
    ALOG_SKIPPED="pointsman check refuses access_log: $PM_CHECK_OUT"
fi
[[ -z $ALOG_SKIPPED ]] || log "access-log phase skipped: $ALOG_SKIPPED"
ETCD_VERSION=""
[[ -z $ETCD_BIN ]] ||
    ETCD_VERSION=$("$ETCD_BIN" --version 2>/dev/null | sed -n 's/^etcd Version: //p' || true)

{
    echo "wrk_threads=$BENCH_THREADS"
    echo "wrk_conns=$BENCH_CONNS"
    echo "wrk_seconds=$BENCH_SECONDS"
    echo "wrk_warmup=$BENCH_WARMUP"
    echo "rounds=$BENCH_ROUNDS"
    echo "workers_rounds=$BENCH_WORKERS_ROUNDS"
    echo "round_order=alternating"
    echo "skip_wrk=$BENCH_SKIP_WRK"
    echo "skip_idle=$BENCH_SKIP_IDLE"
    echo "skip_stream=$BENCH_SKIP_STREAM"
    echo "idle_conns=$BENCH_IDLE_CONNS"
    echo "stream_bytes=$STREAM_BYTES"
    echo "sample_interval=$BENCH_SAMPLE_INTERVAL"
    echo "upload_via=$BENCH_UPLOAD_VIA"
    echo "skip_shadow=$BENCH_SKIP_SHADOW"
    echo "shadow_delay=$BENCH_SHADOW_DELAY"
    echo "nofile=$NOFILE"
    echo "nginx_bin=$NGINX_BIN"
    echo "wrk_bin=$WRK_BIN"
    echo "pointsman_cmd=$PM_CMD_DISPLAY"
    echo "pointsman_label=$PM_LABEL"
    echo "pointsman_workers=1"
    echo "skip_workers=$([[ -n $WORKERS_SKIPPED ]] && echo 1 || echo 0)"
    echo "workers_skipped_because=$WORKERS_SKIPPED"
    echo "flips=$BENCH_FLIPS"
    echo "skip_fleet=$([[ -n $FLEET_SKIPPED ]] && echo 1 || echo 0)"
    echo "fleet_skipped_because=$FLEET_SKIPPED"
    echo "fleet_changes=$BENCH_FLEET_CHANGES"
    echo "fleet_load=$BENCH_FLEET_LOAD"
    echo "etcd_bin=$ETCD_BIN"
    echo "etcd_version=$ETCD_VERSION"
    echo "skip_tls=$([[ -n $TLS_SKIPPED ]] && echo 1 || echo 0)"
    echo "tls_skipped_because=$TLS_SKIPPED"
    echo "tls_cert=$TLS_CERT_KIND"
    echo "skip_access_log=$([[ -n $ALOG_SKIPPED ]] && echo 1 || echo 0)"
    echo "access_log_skipped_because=$ALOG_SKIPPED"
    echo "access_log_settle_ms=$ALOG_SETTLE_MS"
    echo "clk_tck=$(getconf CLK_TCK)"
    echo "loadavg_start=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)"
} >"$RESULTS/meta.env"

# --------------------------------------------------------------------------- start servers

log "starting backend nginx"
start_bg "$WORK/backend/stdout.log" "$NGINX_BIN" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" \
    -e "$WORK/backend/error.log"
PID_BACKEND=$LAST_PID
log "starting nginx proxy"
start_bg "$WORK/nginx-proxy/stdout.log" "$NGINX_BIN" -p "$WORK/nginx-proxy" \
    -c "$WORK/nginx-proxy/nginx.conf" -e "$WORK/nginx-proxy/error.log"
PID_NGINX=$LAST_PID
log "starting sink.py"
start_bg "$WORK/sink.log" "$PYTHON" "$BENCH_DIR/sink.py" --port "$P_SINK" \
    --max-seconds "$((BENCH_TIMEOUT + 60))"
PID_SINK=$LAST_PID
log "starting Pointsman: $PM_CMD_DISPLAY"
start_bg "$WORK/pointsman/pointsman.log" "${PM_ARGV[@]}"
PID_PM=$LAST_PID

wait_http "backend nginx" "http://127.0.0.1:$P_BACKEND/" "$PID_BACKEND" "$WORK/backend/error.log" ||
    die "backend nginx did not start"
wait_http "nginx proxy" "http://127.0.0.1:$P_NGINX/" "$PID_NGINX" "$WORK/nginx-proxy/error.log" ||
    die "nginx proxy did not start"
wait_http "sink.py" "http://127.0.0.1:$P_SINK/" "$PID_SINK" "$WORK/sink.log" ||
    die "sink.py did not start"
wait_http "Pointsman admin" "http://127.0.0.1:$P_ADMIN/healthz" "$PID_PM" \
    "$WORK/pointsman/pointsman.log" || die "Pointsman did not start (config: $PM_CONFIG)"
wait_http "Pointsman" "http://127.0.0.1:$P_PM/" "$PID_PM" "$WORK/pointsman/pointsman.log" ||
    die "Pointsman does not proxy GET / to the backend"
for hdr in "X-User-Id: u42" "X-Pointsman-Pool: green"; do
    body=$("$CURL_BIN" -fsS --max-time 5 -H "$hdr" "http://127.0.0.1:$P_PM/") ||
        die "Pointsman failed GET / with '$hdr'"
    [[ $body == ok ]] || die "Pointsman answered GET / with '$hdr' with unexpected body '$body'"
done
log "all servers up (Pointsman pid $PID_PM)"

# --------------------------------------------------------------------------- wrk

run_wrk() { # seconds url outfile [more wrk arguments]
    # In the background + `wait`, so Ctrl-C reaches this script's trap at once (wrk itself
    # catches SIGINT and exits 0, which would make bash carry on with the next step).
    start_bg "$3" timeout -k 5 "$(($1 + 30))" "$WRK_BIN" -t"$BENCH_THREADS" -c"$BENCH_CONNS" \
        -d"$1"s --latency -s "$BENCH_DIR/sticky.lua" "${@:4}" "$2"
    local pid=$LAST_PID rc=0
    wait "$pid" || rc=$?
    forget_pid "$pid"
    return "$rc"
}

ROUND_ORDER=()
round_order() { # round name... -> ROUND_ORDER: the names as given in odd rounds, reversed in even
    local round=$1 i
    shift
    ROUND_ORDER=("$@")
    if ((round % 2 == 0)); then
        ROUND_ORDER=()
        for ((i = $#; i >= 1; i--)); do ROUND_ORDER+=("${!i}"); done
    fi
}

if [[ $BENCH_SKIP_WRK != 1 ]]; then
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        round_order "$round" backend nginx pointsman
        log "round $round/$BENCH_ROUNDS: ${ROUND_ORDER[*]}"
        for target in "${ROUND_ORDER[@]}"; do
            case $target in
                backend) port=$P_BACKEND ;;
                nginx) port=$P_NGINX ;;
                pointsman) port=$P_PM ;;
            esac
            url="http://127.0.0.1:$port/"
            out=$RESULTS/wrk_${target}_${round}.txt
            if ((BENCH_WARMUP > 0)); then
                log "round $round/$BENCH_ROUNDS: $target warm-up ${BENCH_WARMUP}s"
                run_wrk "$BENCH_WARMUP" "$url" "$RESULTS/warmup_${target}_${round}.txt" ||
                    warn "wrk warm-up against $target failed"
            fi
            log "round $round/$BENCH_ROUNDS: $target ${BENCH_SECONDS}s"
            if run_wrk "$BENCH_SECONDS" "$url" "$out"; then
                log "  $target: $("$PYTHON" "$BENCH_DIR/report.py" wrk "$out" || true)"
            else
                warn "wrk against $target failed:"
                tail -n 20 "$out" >&2 || true
            fi
        done
    done
fi

# --------------------------------------------------------------------------- shadows

CPU_TOTAL=0
CPU_MASTER=0
CPU_PROCS=0
tree_cpu() { # pid -> CPU_TOTAL, CPU_MASTER (clock ticks), CPU_PROCS
    # CPU_TOTAL: utime + stime (all threads) of the process and every descendant (Pointsman:
    # the master and its workers; nginx: master and workers), plus their cutime + cstime (so a
    # worker that exits and is reaped during a run still counts, in its parent's);
    # CPU_MASTER: utime + stime of the process itself; CPU_PROCS: how many processes.
    local pid stat
    local -a f
    CPU_TOTAL=0
    CPU_MASTER=0
    CPU_PROCS=0
    tree_pids "$1"
    for pid in "${TREE_PIDS[@]}"; do
        { read -r stat <"/proc/$pid/stat"; } 2>/dev/null || continue
        stat=${stat##*) } # the fields after "(command) ", from field 3 (state) on
        read -r -a f <<<"$stat"
        CPU_TOTAL=$((CPU_TOTAL + f[11] + f[12] + f[13] + f[14]))
        [[ $pid == "$1" ]] && CPU_MASTER=$((f[11] + f[12]))
        CPU_PROCS=$((CPU_PROCS + 1))
    done
    return 0
}

admin_call() { # method path [json body] -> prints the HTTP status; the body is in admin.out
    local args=(-sS -o "$WORK/admin.out" -w '%{http_code}' --max-time 5 -X "$1"
        -H "Authorization: Bearer $POINTSMAN_TOKEN" "http://127.0.0.1:$P_ADMIN$2")
    [[ $# -ge 3 ]] && args+=(-H 'Content-Type: application/json' --data "$3")
    "$CURL_BIN" "${args[@]}" 2>/dev/null || echo 000
}

set_shadow() { # none | fast | dark : the route's only shadow, mirrored at 100 %
    local pool code
    for pool in fast dark; do
        code=$(admin_call DELETE "/v1/routes/shop/shadows/$pool")
        [[ $code == 200 || $code == 404 ]] || warn "removing shadow $pool: HTTP $code"
    done
    [[ $1 == none ]] && return 0
    code=$(admin_call PUT "/v1/routes/shop/shadows/$1" \
        '{"percent": 100, "methods": ["GET"], "timeout": "2s", "max_in_flight": 256}')
    [[ $code == 200 ]] || { warn "adding shadow $1: HTTP $code: $(cat "$WORK/admin.out")"; return 1; }
}

if [[ $BENCH_SKIP_SHADOW != 1 && $BENCH_SKIP_WRK != 1 && -z $PM_LABEL ]] && alive "$PID_PM"; then
    log "starting the slow shadow (answers after ${BENCH_SHADOW_DELAY}s) and nginx with mirror"
    start_bg "$WORK/slow.log" "$PYTHON" "$BENCH_DIR/slow.py" --port "$P_SLOW" \
        --delay "$BENCH_SHADOW_DELAY" --max-seconds "$((BENCH_TIMEOUT + 60))"
    PID_SLOW=$LAST_PID
    start_bg "$WORK/nginx-mirror/stdout.log" "$NGINX_BIN" -p "$WORK/nginx-mirror" \
        -c "$WORK/nginx-mirror/nginx.conf" -e "$WORK/nginx-mirror/error.log"
    PID_MIRROR=$LAST_PID
    wait_http "slow shadow" "http://127.0.0.1:$P_SLOW/__healthz" "$PID_SLOW" "$WORK/slow.log" ||
        die "slow.py did not start"
    wait_http "nginx mirror" "http://127.0.0.1:$P_MIRROR/" "$PID_MIRROR" \
        "$WORK/nginx-mirror/error.log" || die "nginx with mirror did not start"
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        # pm_slow next to pm_plain in both directions; every phase sets Pointsman's shadow
        # itself (none for the nginx phases), so any order works.
        round_order "$round" pm_plain pm_slow pm_fast nginx_plain nginx_mirror
        log "round $round/$BENCH_ROUNDS, shadow isolation: ${ROUND_ORDER[*]}"
        for phase in "${ROUND_ORDER[@]}"; do
            case $phase in
                pm_plain) set_shadow none; port=$P_PM ;;
                pm_slow) set_shadow dark || continue; port=$P_PM ;;
                pm_fast) set_shadow fast || continue; port=$P_PM ;;
                nginx_plain) set_shadow none; port=$P_NGINX ;;
                nginx_mirror) set_shadow none; port=$P_MIRROR ;;
            esac
            url="http://127.0.0.1:$port/"
            out=$RESULTS/shadow_${phase}_${round}.txt
            if ((BENCH_WARMUP > 0)); then
                run_wrk "$BENCH_WARMUP" "$url" "$RESULTS/warmup_shadow_${phase}_${round}.txt" ||
                    true
            fi
            tree_cpu "$PID_PM"
            before=$CPU_TOTAL
            log "round $round/$BENCH_ROUNDS: shadow isolation, $phase ${BENCH_SECONDS}s"
            if run_wrk "$BENCH_SECONDS" "$url" "$out"; then
                tree_cpu "$PID_PM"
                echo "$((CPU_TOTAL - before))" >"$RESULTS/shadow_${phase}_${round}.cpu"
                log "  $phase: $("$PYTHON" "$BENCH_DIR/report.py" wrk "$out" || true)"
            else
                warn "wrk for $phase failed"
            fi
            if [[ $phase == pm_fast || $phase == pm_slow ]]; then
                pool=fast
                [[ $phase == pm_slow ]] && pool=dark
                code=$(admin_call GET "/v1/routes/shop/shadows/$pool")
                [[ $code == 200 ]] && cp "$WORK/admin.out" "$RESULTS/shadow_${phase}_${round}.json"
            fi
        done
    done
    set_shadow none
    stop_pids "$PID_SLOW" "$PID_MIRROR"
    forget_pid "$PID_SLOW"
    forget_pid "$PID_MIRROR"
fi

# --------------------------------------------------------------------------- workers

scrape_metrics() { # admin_port outfile : the master's /metrics (an empty file if it fails)
    "$CURL_BIN" -fsS --max-time 5 -o "$2" "http://127.0.0.1:$1/metrics" 2>/dev/null || : >"$2"
}

if [[ -z $WORKERS_SKIPPED ]]; then
    # Six targets, all started once for this phase and kept running for all its rounds (each
    # on its own ports), all proxying to the same backend nginx; stopped before the memory tests.
    declare -A W_PID=() W_PORT=() W_ADMIN=() W_WORKERS=()
    W_PORT=([nginx_w2]=$P_NGINX_W2 [nginx_w2_bound]=$P_NGINX_W2B [pm_w2]=$P_PM_W2
        [pm_w2_unbound]=$P_PM_W2U [pm_w1]=$P_PM_W1 [pm_w2_shared]=$P_PM_W2S)
    W_ADMIN=([pm_w2]=$P_ADMIN_W2 [pm_w2_unbound]=$P_ADMIN_W2U [pm_w1]=$P_ADMIN_W1
        [pm_w2_shared]=$P_ADMIN_W2S)
    W_WORKERS=([nginx_w2]=2 [nginx_w2_bound]=2 [pm_w2]=2 [pm_w2_unbound]=2 [pm_w1]=1
        [pm_w2_shared]=2)
    log "workers phase: starting nginx proxy (worker_processes 2, unbound and bound to CPUs)" \
        "and Pointsman workers: 2 (bound and unbound), workers: 1, workers: 2 --shared-socket"
    for name in nginx_w2 nginx_w2_bound; do
        start_bg "$WORK/workers/$name/stdout.log" "$NGINX_BIN" -p "$WORK/workers/$name" \
            -c "$WORK/workers/$name/nginx.conf" -e "$WORK/workers/$name/error.log"
        W_PID[$name]=$LAST_PID
    done
    for name in pm_w2 pm_w2_unbound pm_w1 pm_w2_shared; do
        extra=""
        [[ $name == pm_w2_shared ]] && extra="--shared-socket"
        pm_argv "$WORK/workers/$name/pointsman.yaml" "${W_PORT[$name]}" "${W_ADMIN[$name]}" \
            "$extra"
        echo "workers_cmd_$name=${PM_CMD//"$ROOT/"/}" >>"$RESULTS/meta.env"
        start_bg "$WORK/workers/$name/pointsman.log" "${PM_ARGV[@]}"
        W_PID[$name]=$LAST_PID
    done
    for name in nginx_w2 nginx_w2_bound; do
        wait_http "nginx proxy $name" "http://127.0.0.1:${W_PORT[$name]}/" "${W_PID[$name]}" \
            "$WORK/workers/$name/error.log" || {
            warn "its rounds are skipped"
            unset "W_PID[$name]"
        }
    done
    for name in pm_w2 pm_w2_unbound pm_w1 pm_w2_shared; do
        logfile=$WORK/workers/$name/pointsman.log
        if wait_http "Pointsman $name admin" "http://127.0.0.1:${W_ADMIN[$name]}/healthz" \
            "${W_PID[$name]}" "$logfile" &&
            wait_http "Pointsman $name" "http://127.0.0.1:${W_PORT[$name]}/" "${W_PID[$name]}" \
                "$logfile"; then
            tree_pids "${W_PID[$name]}"
            procs=${#TREE_PIDS[@]}
            ((procs == ${W_WORKERS[$name]} + 1)) ||
                warn "Pointsman $name: $procs processes, expected a master and" \
                    "${W_WORKERS[$name]} workers"
            echo "workers_procs_$name=$procs" >>"$RESULTS/meta.env"
            log "Pointsman $name up: master ${W_PID[$name]}, workers ${TREE_PIDS[*]:1}"
        else
            warn "Pointsman $name did not start; its rounds are skipped"
            unset "W_PID[$name]"
        fi
    done
    mid_wait="$((BENCH_SECONDS / 2)).$((BENCH_SECONDS % 2 * 5))" # the mid-run scrape
    for ((round = 1; round <= BENCH_WORKERS_ROUNDS; round++)); do
        round_order "$round" nginx_w2 pm_w2 nginx_w2_bound pm_w2_unbound pm_w1 pm_w2_shared
        log "round $round/$BENCH_WORKERS_ROUNDS, workers: ${ROUND_ORDER[*]}"
        for phase in "${ROUND_ORDER[@]}"; do
            pid=${W_PID[$phase]:-}
            if [[ -z $pid ]] || ! alive "$pid"; then
                warn "workers: $phase is not running; skipped"
                continue
            fi
            url="http://127.0.0.1:${W_PORT[$phase]}/"
            base=$RESULTS/workers_${phase}_${round}
            admin=${W_ADMIN[$phase]:-}
            if ((BENCH_WARMUP > 0)); then
                run_wrk "$BENCH_WARMUP" "$url" "$RESULTS/warmup_workers_${phase}_${round}.txt" ||
                    true
            fi
            mid_pid=""
            if [[ -n $admin ]]; then
                scrape_metrics "$admin" "$base.before.prom"
                start_bg "$base.mid.prom" bash -c "sleep $mid_wait; exec '$CURL_BIN' -fsS \
--max-time 5 http://127.0.0.1:$admin/metrics"
                mid_pid=$LAST_PID
            fi
            tree_cpu "$pid"
            cpu_total=$CPU_TOTAL
            cpu_master=$CPU_MASTER
            wall_start=$EPOCHREALTIME
            log "round $round/$BENCH_WORKERS_ROUNDS: workers, $phase ${BENCH_SECONDS}s"
            wrk_ok=1
            run_wrk "$BENCH_SECONDS" "$url" "$base.txt" || wrk_ok=0
            wall_end=$EPOCHREALTIME
            tree_cpu "$pid"
            {
                echo "total_ticks=$((CPU_TOTAL - cpu_total))"
                echo "master_ticks=$((CPU_MASTER - cpu_master))"
                echo "processes=$CPU_PROCS"
                echo "wall_start=${wall_start/,/.}"
                echo "wall_end=${wall_end/,/.}"
            } >"$base.cpu"
            if [[ -n $mid_pid ]]; then
                wait "$mid_pid" || warn "workers: the mid-run /metrics scrape of $phase failed"
                forget_pid "$mid_pid"
                scrape_metrics "$admin" "$base.after.prom"
            fi
            if ((wrk_ok)); then
                log "  $phase: $("$PYTHON" "$BENCH_DIR/report.py" wrk "$base.txt" || true)"
            else
                warn "wrk for $phase failed"
            fi
        done
    done

    # Flips under load: BENCH_FLIPS flips, green and blue in turn (both pools are the same
    # backend nginx), spread over the middle of one wrk run against workers: 2.
    pid=${W_PID[pm_w2]:-}
    if ((BENCH_FLIPS > 0)) && [[ -n $pid ]] && alive "$pid"; then
        spread=$((BENCH_SECONDS > 1 ? BENCH_SECONDS - 1 : 0))
        log "flips under load: $BENCH_FLIPS flips of route shop (green, blue, ...) on Pointsman" \
            "workers: 2 during a ${BENCH_SECONDS}s wrk run"
        start_bg "$RESULTS/flips_wrk.txt" timeout -k 5 "$((BENCH_SECONDS + 30))" "$WRK_BIN" \
            -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$BENCH_SECONDS"s --latency \
            -s "$BENCH_DIR/sticky.lua" "http://127.0.0.1:$P_PM_W2/"
        flips_wrk_pid=$LAST_PID
        start_bg "$RESULTS/flips.txt" "$PYTHON" "$BENCH_DIR/flips.py" \
            --admin "http://127.0.0.1:$P_ADMIN_W2" --route shop --pools green,blue \
            --count "$BENCH_FLIPS" --start-delay 0.5 --spread "$spread"
        flips_pid=$LAST_PID
        flips_rc=0
        wait "$flips_pid" || flips_rc=$?
        forget_pid "$flips_pid"
        ((flips_rc == 0)) || warn "flips.py exited with $flips_rc; see $RESULTS/flips.txt"
        wait "$flips_wrk_pid" || warn "wrk during the flips failed"
        forget_pid "$flips_wrk_pid"
        log "  flips: $("$PYTHON" "$BENCH_DIR/report.py" flips "$RESULTS/flips.txt" || true)"
        log "  wrk during the flips: $("$PYTHON" "$BENCH_DIR/report.py" wrk \
            "$RESULTS/flips_wrk.txt" || true)"
    fi

    stopping=()
    for name in "${!W_PID[@]}"; do stopping+=("${W_PID[$name]}"); done
    if ((${#stopping[@]})); then
        log "workers phase: stopping its servers"
        stop_pids "${stopping[@]}"
        for pid in "${stopping[@]}"; do forget_pid "$pid"; done
    fi
fi

# --------------------------------------------------------------------------- fleet

if [[ -z $FLEET_SKIPPED ]]; then
    # A throwaway one-member etcd (its data under the work dir), members A and B of one fleet in
    # it and a file-store instance, all `workers: 1` with the harness's routes, each on ports of
    # its own; started once for this phase and stopped at its end (the members before etcd, so
    # they leave the fleet at once).
    F_DIR=$WORK/fleet
    etcd_client=http://127.0.0.1:$P_ETCD
    etcd_peer=http://127.0.0.1:$P_ETCD_PEER
    log "fleet phase: starting etcd $ETCD_VERSION, Pointsman with the file store and fleet" \
        "members A and B (etcd store), workers: 1 each"
    start_bg "$F_DIR/etcd.log" "$ETCD_BIN" --name bench --data-dir "$F_DIR/etcd" \
        --listen-client-urls "$etcd_client" --advertise-client-urls "$etcd_client" \
        --listen-peer-urls "$etcd_peer" --initial-advertise-peer-urls "$etcd_peer" \
        --initial-cluster "bench=$etcd_peer" --logger zap --log-level error
    PID_ETCD=$LAST_PID
    declare -A F_PID=() F_UP=() F_PORT=() F_ADMIN=() F_LABEL=()
    F_PORT=([pm_file]=$P_PM_FF [pm_a]=$P_PM_FA [pm_b]=$P_PM_FB)
    F_ADMIN=([pm_file]=$P_ADMIN_FF [pm_a]=$P_ADMIN_FA [pm_b]=$P_ADMIN_FB)
    F_LABEL=([pm_file]="file store" [pm_a]="member A" [pm_b]="member B")
    fleet_start() { # name
        pm_argv "$F_DIR/$1/pointsman.yaml" "${F_PORT[$1]}" "${F_ADMIN[$1]}" ""
        echo "fleet_cmd_$1=${PM_CMD//"$ROOT/"/}" >>"$RESULTS/meta.env"
        start_bg "$F_DIR/$1/pointsman.log" "${PM_ARGV[@]}"
        F_PID[$1]=$LAST_PID
    }
    fleet_up() { # name : wait until it answers; F_UP[name]=1 if it does (else runs are skipped)
        local logfile=$F_DIR/$1/pointsman.log
        if wait_http "Pointsman ${F_LABEL[$1]} admin" "http://127.0.0.1:${F_ADMIN[$1]}/healthz" \
            "${F_PID[$1]}" "$logfile" &&
            wait_http "Pointsman ${F_LABEL[$1]}" "http://127.0.0.1:${F_PORT[$1]}/" \
                "${F_PID[$1]}" "$logfile"; then
            tree_pids "${F_PID[$1]}"
            log "Pointsman ${F_LABEL[$1]} up: master ${F_PID[$1]}, workers ${TREE_PIDS[*]:1}"
            F_UP[$1]=1
            return 0
        fi
        warn "Pointsman ${F_LABEL[$1]} did not start; its runs are skipped"
        echo "fleet_problem_$1=did not start" >>"$RESULTS/meta.env"
        return 1
    }
    fleet_start pm_file
    if wait_http "etcd" "$etcd_client/health" "$PID_ETCD" "$F_DIR/etcd.log"; then
        fleet_start pm_a # alone first: it creates the fleet's state in etcd from its config
        if fleet_up pm_a; then
            fleet_start pm_b
            fleet_up pm_b || true
        fi
    else
        warn "etcd did not start; the fleet members' runs are skipped"
        echo "fleet_problem_etcd=did not start" >>"$RESULTS/meta.env"
    fi
    fleet_up pm_file || true

    # req/s: the file-store instance against member A, paired by round (B idles meanwhile). The
    # CPU of etcd (all its threads) is read around every run too: the store is off the request
    # path, so it should stay near 0.
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        round_order "$round" pm_file pm_etcd
        log "round $round/$BENCH_ROUNDS, fleet: ${ROUND_ORDER[*]}"
        for phase in "${ROUND_ORDER[@]}"; do
            name=$phase
            [[ $phase == pm_etcd ]] && name=pm_a
            pid=${F_PID[$name]:-}
            if [[ -z ${F_UP[$name]:-} ]] || ! alive "$pid"; then
                warn "fleet: $phase is not running; skipped"
                continue
            fi
            url="http://127.0.0.1:${F_PORT[$name]}/"
            base=$RESULTS/fleet_${phase}_${round}
            if ((BENCH_WARMUP > 0)); then
                run_wrk "$BENCH_WARMUP" "$url" "$RESULTS/warmup_fleet_${phase}_${round}.txt" ||
                    true
            fi
            tree_cpu "$PID_ETCD"
            etcd_ticks=$CPU_TOTAL
            tree_cpu "$pid"
            cpu_total=$CPU_TOTAL
            cpu_master=$CPU_MASTER
            wall_start=$EPOCHREALTIME
            log "round $round/$BENCH_ROUNDS: fleet, $phase ${BENCH_SECONDS}s"
            wrk_ok=1
            run_wrk "$BENCH_SECONDS" "$url" "$base.txt" || wrk_ok=0
            wall_end=$EPOCHREALTIME
            tree_cpu "$pid"
            {
                echo "total_ticks=$((CPU_TOTAL - cpu_total))"
                echo "master_ticks=$((CPU_MASTER - cpu_master))"
                echo "processes=$CPU_PROCS"
                echo "wall_start=${wall_start/,/.}"
                echo "wall_end=${wall_end/,/.}"
            } >"$base.cpu"
            tree_cpu "$PID_ETCD"
            echo "etcd_ticks=$((CPU_TOTAL - etcd_ticks))" >>"$base.cpu"
            if ((wrk_ok)); then
                log "  $phase: $("$PYTHON" "$BENCH_DIR/report.py" wrk "$base.txt" || true)"
            else
                warn "wrk for $phase failed"
            fi
        done
    done

    # Propagation: BENCH_FLEET_CHANGES weight changes through A, each timed until B's member
    # key shows it, while wrk loads the member(s) of BENCH_FLEET_LOAD. wrk runs until fleet.py
    # is done (it prints its results on SIGINT); its own -d is only a bound.
    loads=()
    case $BENCH_FLEET_LOAD in
        a) loads=(pm_a) load_text="member A" ;;
        b) loads=(pm_b) load_text="member B" ;;
        both) loads=(pm_a pm_b) load_text="members A and B" ;;
    esac
    ready=1
    for name in pm_a pm_b; do
        [[ -n ${F_UP[$name]:-} ]] && alive "${F_PID[$name]}" || ready=0
    done
    if ((BENCH_FLEET_CHANGES > 0 && ready)); then
        spread=$((BENCH_SECONDS > 1 ? BENCH_SECONDS - 1 : 0))
        bound=$((BENCH_SECONDS + 120))
        log "fleet propagation: $BENCH_FLEET_CHANGES weight changes of route shop through" \
            "member A, each until member B shows it, while wrk loads $load_text"
        warm_pids=()
        if ((BENCH_WARMUP > 0)); then
            for name in "${loads[@]}"; do
                start_bg "$RESULTS/warmup_fleet_load_${name#pm_}.txt" timeout -k 5 \
                    "$((BENCH_WARMUP + 30))" "$WRK_BIN" -t"$BENCH_THREADS" -c"$BENCH_CONNS" \
                    -d"$BENCH_WARMUP"s --latency -s "$BENCH_DIR/sticky.lua" \
                    "http://127.0.0.1:${F_PORT[$name]}/"
                warm_pids+=("$LAST_PID")
            done
            for pid in "${warm_pids[@]}"; do
                wait "$pid" || true
                forget_pid "$pid"
            done
        fi
        load_pids=()
        for name in "${loads[@]}"; do
            start_bg "$RESULTS/fleet_load_${name#pm_}.txt" timeout -k 5 "$((bound + 30))" \
                "$WRK_BIN" -t"$BENCH_THREADS" -c"$BENCH_CONNS" -d"$bound"s --latency \
                -s "$BENCH_DIR/sticky.lua" "http://127.0.0.1:${F_PORT[$name]}/"
            load_pids+=("$LAST_PID")
        done
        start_bg "$F_DIR/fleet_py.log" "$PYTHON" "$BENCH_DIR/fleet.py" \
            --admin "http://127.0.0.1:$P_ADMIN_FA" --etcd "$etcd_client" --prefix "$FLEET_PREFIX" \
            --member-admin "127.0.0.1:$P_ADMIN_FB" --route shop --pools blue,green \
            --count "$BENCH_FLEET_CHANGES" --start-delay 0.5 --spread "$spread" \
            --out "$RESULTS/fleet_changes.json"
        fleet_py_pid=$LAST_PID
        fleet_rc=0
        wait "$fleet_py_pid" || fleet_rc=$?
        forget_pid "$fleet_py_pid"
        ((fleet_rc == 0)) || {
            warn "fleet.py exited with $fleet_rc; last lines of $F_DIR/fleet_py.log:"
            tail -n 20 "$F_DIR/fleet_py.log" >&2 || true
        }
        for pid in "${load_pids[@]}"; do
            kill -INT -- "-$pid" 2>/dev/null || true
        done
        for pid in "${load_pids[@]}"; do
            wait "$pid" || warn "wrk during the fleet changes failed"
            forget_pid "$pid"
        done
        log "  fleet changes: $("$PYTHON" "$BENCH_DIR/report.py" fleet \
            "$RESULTS/fleet_changes.json" || true)"
        for name in "${loads[@]}"; do
            log "  wrk on ${F_LABEL[$name]} meanwhile: $("$PYTHON" "$BENCH_DIR/report.py" wrk \
                "$RESULTS/fleet_load_${name#pm_}.txt" || true)"
        done
    elif ((BENCH_FLEET_CHANGES > 0)); then
        warn "fleet propagation skipped: members A and B are not both running"
    fi

    # The members first (they revoke their leases and leave the fleet), etcd last.
    stopping=()
    for name in "${!F_PID[@]}"; do stopping+=("${F_PID[$name]}"); done
    log "fleet phase: stopping its servers"
    if ((${#stopping[@]})); then
        stop_pids "${stopping[@]}"
        for pid in "${stopping[@]}"; do forget_pid "$pid"; done
    fi
    stop_pids "$PID_ETCD"
    forget_pid "$PID_ETCD"
fi

# --------------------------------------------------------------------------- TLS

write_cpu() { # outfile ticks_before master_ticks_before wall_start pid : the .cpu file of a run
    local wall_end=$EPOCHREALTIME
    tree_cpu "$5"
    {
        echo "total_ticks=$((CPU_TOTAL - $2))"
        echo "master_ticks=$((CPU_MASTER - $3))"
        echo "processes=$CPU_PROCS"
        echo "wall_start=${4/,/.}"
        echo "wall_end=${wall_end/,/.}"
    } >"$1"
}

measure_run() { # pid url base phase round [more wrk arguments] : warm-up, then the wrk run
    # with the CPU of pid's tree read around it; base.txt (wrk), base.cpu
    local pid=$1 url=$2 base=$3 phase=$4 round=$5 ticks master start
    shift 5
    if ((BENCH_WARMUP > 0)); then
        run_wrk "$BENCH_WARMUP" "$url" "${base%/*}/warmup_${base##*/}.txt" "$@" || true
    fi
    [[ -z ${BEFORE_RUN:-} ]] || "$BEFORE_RUN"
    tree_cpu "$pid"
    ticks=$CPU_TOTAL
    master=$CPU_MASTER
    start=$EPOCHREALTIME
    log "round $round/$BENCH_ROUNDS: $phase ${BENCH_SECONDS}s"
    if run_wrk "$BENCH_SECONDS" "$url" "$base.txt" "$@"; then
        write_cpu "$base.cpu" "$ticks" "$master" "$start" "$pid"
        log "  $phase: $("$PYTHON" "$BENCH_DIR/report.py" wrk "$base.txt" || true)"
    else
        write_cpu "$base.cpu" "$ticks" "$master" "$start" "$pid"
        warn "wrk for $phase failed"
    fi
}

nginx_tls_conf() { # dir port on|off : the nginx proxy of phase 1 behind a TLS listener, with
    # session resumption (a shared session cache and tickets) on or off
    local resume="ssl_session_cache off;
        ssl_session_tickets off;"
    [[ $3 == on ]] && resume="ssl_session_cache shared:SSL:10m;
        ssl_session_tickets on;"
    cat <<EOF
$(nginx_head "$1")
http {
$(nginx_http_common "$1")
    upstream backend {
        server 127.0.0.1:$P_BACKEND;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$2 ssl backlog=4096;
        ssl_certificate $TLS_CERT;
        ssl_certificate_key $TLS_KEY;
        ssl_protocols TLSv1.2 TLSv1.3;
        $resume
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-Proto https;  # as Pointsman sends on a TLS listener
        }
    }
}
EOF
}

tls_probe() { # port -> TLS_PROBE: "protocol=... cipher=... resumed=N/M status=..." (or "")
    TLS_PROBE=$(timeout 30 "$PYTHON" "$BENCH_DIR/tls_probe.py" --port "$1" 2>/dev/null || true)
}

if [[ -z $TLS_SKIPPED ]]; then
    # Pointsman first: whether it lets a client resume a TLS session decides the nginx peer's
    # settings (wrk offers the last session whenever it reconnects, so a server that resumes
    # turns the handshake runs into resumptions). Both are kept for all the phase's rounds.
    T_DIR=$WORK/tls
    log "TLS phase: starting Pointsman with a TLS listener (workers: 1)"
    pm_argv "$T_DIR/pm_tls/pointsman.yaml" "$P_PM_TLS" "$P_ADMIN_TLS" ""
    echo "tls_cmd=${PM_CMD//"$ROOT/"/}" >>"$RESULTS/meta.env"
    start_bg "$T_DIR/pm_tls/pointsman.log" "${PM_ARGV[@]}"
    declare -A T_PID=() T_PORT=()
    T_PID[pm_tls]=$LAST_PID
    T_PORT=([nginx_tls]=$P_NGINX_TLS [pm_tls]=$P_PM_TLS)
    tls_resume=off
    if wait_http "Pointsman TLS admin" "http://127.0.0.1:$P_ADMIN_TLS/healthz" "${T_PID[pm_tls]}" \
        "$T_DIR/pm_tls/pointsman.log" &&
        wait_http "Pointsman over TLS" "https://127.0.0.1:$P_PM_TLS/" "${T_PID[pm_tls]}" \
            "$T_DIR/pm_tls/pointsman.log"; then
        tls_probe "$P_PM_TLS"
        echo "tls_probe_pm=$TLS_PROBE" >>"$RESULTS/meta.env"
        [[ $TLS_PROBE =~ resumed=([0-9]+)/ ]] && ((BASH_REMATCH[1] > 0)) && tls_resume=on
        log "Pointsman over TLS: $TLS_PROBE; nginx gets session resumption $tls_resume"
        body=$("$CURL_BIN" -fsSk --max-time 5 "https://127.0.0.1:$P_PM_TLS/" 2>/dev/null || true)
        [[ $body == ok ]] || warn "Pointsman over TLS answered GET / with '$body'"
    else
        warn "Pointsman with a TLS listener did not start; its runs are skipped"
        echo "tls_problem=Pointsman with a TLS listener did not start" >>"$RESULTS/meta.env"
        unset 'T_PID[pm_tls]'
    fi
    echo "tls_resumption=$tls_resume" >>"$RESULTS/meta.env"
    nginx_tls_conf "$T_DIR/nginx_tls" "$P_NGINX_TLS" "$tls_resume" >"$T_DIR/nginx_tls/nginx.conf"
    log "TLS phase: starting nginx with a TLS listener (1 worker, session resumption $tls_resume)"
    start_bg "$T_DIR/nginx_tls/stdout.log" "$NGINX_BIN" -p "$T_DIR/nginx_tls" \
        -c "$T_DIR/nginx_tls/nginx.conf" -e "$T_DIR/nginx_tls/error.log"
    T_PID[nginx_tls]=$LAST_PID
    if wait_http "nginx over TLS" "https://127.0.0.1:$P_NGINX_TLS/" "${T_PID[nginx_tls]}" \
        "$T_DIR/nginx_tls/error.log"; then
        tls_probe "$P_NGINX_TLS"
        echo "tls_probe_nginx=$TLS_PROBE" >>"$RESULTS/meta.env"
        log "nginx over TLS: $TLS_PROBE"
    else
        warn "nginx with a TLS listener did not start; its runs are skipped"
        unset 'T_PID[nginx_tls]'
    fi

    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        # each pair (keep-alive, new handshakes) next to each other in both directions
        round_order "$round" nginx_tls pm_tls nginx_tls_close pm_tls_close
        log "round $round/$BENCH_ROUNDS, TLS: ${ROUND_ORDER[*]}"
        for phase in "${ROUND_ORDER[@]}"; do
            name=${phase%_close}
            pid=${T_PID[$name]:-}
            if [[ -z $pid ]] || ! alive "$pid"; then
                warn "TLS: $name is not running; $phase skipped"
                continue
            fi
            extra=()
            [[ $phase == *_close ]] && extra=(-H "Connection: close")
            measure_run "$pid" "https://127.0.0.1:${T_PORT[$name]}/" \
                "$RESULTS/tls_${phase}_${round}" "TLS, $phase" "$round" "${extra[@]}"
        done
    done

    stopping=()
    for name in "${!T_PID[@]}"; do stopping+=("${T_PID[$name]}"); done
    if ((${#stopping[@]})); then
        log "TLS phase: stopping its servers"
        stop_pids "${stopping[@]}"
        for pid in "${stopping[@]}"; do forget_pid "$pid"; done
    fi
fi

# --------------------------------------------------------------------------- access log

LOG_SIZE=0
settle_log() { # file -> LOG_SIZE: its size once it has stayed the same for ALOG_SETTLE_MS (the
    # log is written in batches; at most 10 s)
    local size last=-1 since=0 now deadline=$((SECONDS + 10))
    while ((SECONDS < deadline)); do
        size=$(stat -c %s "$1" 2>/dev/null || echo 0)
        now=${EPOCHREALTIME/[.,]/} # microseconds
        if [[ $size != "$last" ]]; then
            last=$size
            since=$now
        elif (((now - since) / 1000 >= ALOG_SETTLE_MS)); then
            break
        fi
        sleep 0.2
    done
    LOG_SIZE=$last
}

alog_mark() { # before the measured pm_log_on run: the log's size once the warm-up's lines are in
    settle_log "$ALOG_FILE"
    ALOG_OFFSET=$LOG_SIZE
}

if [[ -z $ALOG_SKIPPED ]]; then
    # The same Pointsman instance twice, without and with `access_log`, both started for this
    # phase and kept for all its rounds.
    A_DIR=$WORK/alog
    declare -A A_PID=() A_PORT=() A_ADMIN=()
    A_PORT=([pm_log_off]=$P_PM_LOFF [pm_log_on]=$P_PM_LON)
    A_ADMIN=([pm_log_off]=$P_ADMIN_LOFF [pm_log_on]=$P_ADMIN_LON)
    log "access-log phase: starting Pointsman without and with an access log (workers: 1 each)"
    for name in pm_log_off pm_log_on; do
        pm_argv "$A_DIR/$name/pointsman.yaml" "${A_PORT[$name]}" "${A_ADMIN[$name]}" ""
        echo "access_log_cmd_$name=${PM_CMD//"$ROOT/"/}" >>"$RESULTS/meta.env"
        start_bg "$A_DIR/$name/pointsman.log" "${PM_ARGV[@]}"
        A_PID[$name]=$LAST_PID
    done
    for name in pm_log_off pm_log_on; do
        logfile=$A_DIR/$name/pointsman.log
        if ! wait_http "Pointsman $name admin" "http://127.0.0.1:${A_ADMIN[$name]}/healthz" \
            "${A_PID[$name]}" "$logfile" ||
            ! wait_http "Pointsman $name" "http://127.0.0.1:${A_PORT[$name]}/" "${A_PID[$name]}" \
                "$logfile"; then
            warn "Pointsman $name did not start; its runs are skipped"
            echo "access_log_problem_$name=did not start" >>"$RESULTS/meta.env"
            unset "A_PID[$name]"
        fi
    done
    if [[ -n ${A_PID[pm_log_on]:-} ]]; then
        settle_log "$ALOG_FILE"
        if ((LOG_SIZE > 0)); then
            log "access log: $(head -n 1 "$ALOG_FILE" | cut -c1-300)"
            head -n 1 "$ALOG_FILE" >"$RESULTS/access_log_sample.txt" || true
        else
            warn "access log: $ALOG_FILE is still empty after the start-up requests"
            echo "access_log_problem=the log stayed empty after the start-up requests" \
                >>"$RESULTS/meta.env"
        fi
    fi
    for ((round = 1; round <= BENCH_ROUNDS; round++)); do
        round_order "$round" pm_log_off pm_log_on
        log "round $round/$BENCH_ROUNDS, access log: ${ROUND_ORDER[*]}"
        for phase in "${ROUND_ORDER[@]}"; do
            pid=${A_PID[$phase]:-}
            if [[ -z $pid ]] || ! alive "$pid"; then
                warn "access log: $phase is not running; skipped"
                continue
            fi
            base=$RESULTS/alog_${phase}_${round}
            BEFORE_RUN=""
            [[ $phase == pm_log_on ]] && BEFORE_RUN=alog_mark
            measure_run "$pid" "http://127.0.0.1:${A_PORT[$phase]}/" "$base" \
                "access log, $phase" "$round"
            BEFORE_RUN=""
            if [[ $phase == pm_log_on ]]; then
                # the lines the run added, once the last batch is written
                settle_log "$ALOG_FILE"
                lines=$(tail -c +"$((ALOG_OFFSET + 1))" "$ALOG_FILE" | wc -l)
                {
                    echo "lines=$lines"
                    echo "bytes=$((LOG_SIZE - ALOG_OFFSET))"
                } >"$base.lines"
                log "  access log: $lines lines, $((LOG_SIZE - ALOG_OFFSET)) bytes in this run"
            fi
        done
    done
    stopping=()
    for name in "${!A_PID[@]}"; do stopping+=("${A_PID[$name]}"); done
    if ((${#stopping[@]})); then
        log "access-log phase: stopping its servers"
        stop_pids "${stopping[@]}"
        for pid in "${stopping[@]}"; do forget_pid "$pid"; done
    fi
fi

# --------------------------------------------------------------------------- memory

MEM=$RESULTS/mem.env
: >"$MEM"

pm_alive_or_skip() {
    if alive "$PID_PM"; then
        return 0
    fi
    warn "Pointsman (pid $PID_PM) is no longer running; skipping the rest of the memory tests"
    tail -n 30 "$WORK/pointsman/pointsman.log" >&2 || true
    return 1
}

if [[ $BENCH_SKIP_IDLE != 1 ]] && pm_alive_or_skip; then
    sleep 1
    rss_kib "$PID_PM"
    before=$RSS_KIB
    ready=$WORK/idle.ready
    rm -f "$ready"
    open_timeout=$((BENCH_IDLE_CONNS / 100 + 30))
    log "idle connections: opening $BENCH_IDLE_CONNS (RSS before: $((before / 1024)) MiB)"
    start_bg "$WORK/idle_conns.log" "$PYTHON" "$BENCH_DIR/idle_conns.py" "$BENCH_IDLE_CONNS" \
        --port "$P_PM" --hold "$BENCH_IDLE_HOLD" --ready-file "$ready" --timeout "$open_timeout"
    PID_IDLE=$LAST_PID
    while alive "$PID_IDLE" && [[ ! -e $ready ]]; do sleep 0.1; done
    log "idle connections: $(cat "$ready" 2>/dev/null || echo 'not ready'), holding ${BENCH_IDLE_HOLD}s"
    sample_while "$PID_PM" "$PID_IDLE"
    idle_rc=0
    wait "$PID_IDLE" || idle_rc=$?
    forget_pid "$PID_IDLE"
    ((idle_rc == 0)) || warn "idle_conns.py exited with $idle_rc; see $WORK/idle_conns.log"
    grep -E '^idle_[a-z_]+=' "$WORK/idle_conns.log" >>"$MEM" || true
    {
        echo "idle_rss_before_kib=$before"
        echo "idle_rss_peak_kib=$SAMPLE_PEAK"
        echo "idle_samples=$SAMPLE_COUNT"
    } >>"$MEM"
    log "idle connections: RSS peak $((SAMPLE_PEAK / 1024)) MiB ($SAMPLE_COUNT samples)"
fi

stream_test() { # key description curl-args...
    local key=$1 what=$2
    shift 2
    pm_alive_or_skip || {
        echo "${key}_skipped=1" >>"$MEM"
        return 0
    }
    sleep 0.5
    rss_kib "$PID_PM"
    local before=$RSS_KIB
    local out=$WORK/$key.curl resp=$WORK/$key.body
    rm -f "$resp"
    log "$what: streaming $STREAM_BYTES bytes through Pointsman"
    start_bg "$out" "$CURL_BIN" -sS --max-time "$BENCH_STREAM_TIMEOUT" -o "$resp" \
        -w 'http=%{http_code} down=%{size_download} up=%{size_upload} seconds=%{time_total}\n' "$@"
    local pid=$LAST_PID rc=0
    sample_while "$PID_PM" "$pid"
    wait "$pid" || rc=$?
    forget_pid "$pid"
    local http down up secs
    http=$(sed -n 's/.*http=\([0-9]*\).*/\1/p' "$out" | tail -n 1)
    down=$(sed -n 's/.*down=\([0-9]*\).*/\1/p' "$out" | tail -n 1)
    up=$(sed -n 's/.*up=\([0-9]*\).*/\1/p' "$out" | tail -n 1)
    secs=$(sed -n 's/.*seconds=\([0-9.]*\).*/\1/p' "$out" | tail -n 1)
    local bytes
    if [[ $key == download ]]; then
        bytes=${down:-0}
    else
        # what actually arrived at the sink (it answers with the byte count)
        bytes=$(tr -dc '0-9' <"$resp" 2>/dev/null || true)
        [[ -n $bytes ]] || bytes=0
        # (for chunked uploads curl's count includes the chunk framing)
        if [[ $key != upload_chunked && ${up:-0} != "$bytes" ]]; then
            warn "$what: curl sent ${up:-?} bytes, sink received $bytes"
        fi
    fi
    ((rc == 0)) || { warn "$what: curl exited with $rc:"; cat "$out" >&2; }
    {
        echo "${key}_rss_before_kib=$before"
        echo "${key}_rss_peak_kib=$SAMPLE_PEAK"
        echo "${key}_samples=$SAMPLE_COUNT"
        echo "${key}_http=${http:-000}"
        echo "${key}_bytes=$bytes"
        echo "${key}_seconds=${secs:-0}"
        echo "${key}_curl_rc=$rc"
    } >>"$MEM"
    log "$what: HTTP ${http:-000}, $bytes bytes in ${secs:-?}s, RSS $((before / 1024)) -> peak $((SAMPLE_PEAK / 1024)) MiB"
}

if [[ $BENCH_SKIP_STREAM != 1 ]]; then
    base=http://127.0.0.1:$P_PM
    stream_test download "download" "$base/files/big.bin"
    stream_test upload_cl "upload (Content-Length)" -H 'Expect:' -T "$BIG" "$base/upload/big.bin"
    stream_test upload_chunked "upload (chunked)" -H 'Expect:' -H 'Transfer-Encoding: chunked' \
        -T "$BIG" "$base/upload/big.bin"
fi

# --------------------------------------------------------------------------- report

log "stopping servers"
stop_pids "${PIDS[@]}"
PIDS=()

echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || true)" >>"$RESULTS/meta.env"
report_args=(render --results "$RESULTS" --out "$RESULTS_MD" --json "$RESULTS/summary.json")
[[ $BENCH_STRICT == 1 ]] && report_args+=(--strict)
report_rc=0
"$PYTHON" "$BENCH_DIR/report.py" "${report_args[@]}" || report_rc=$?
log "report written to ${RESULTS_MD#"$ROOT"/} (raw output: ${RESULTS#"$ROOT"/}/)"
exit "$report_rc"
