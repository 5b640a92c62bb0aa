# shellcheck shell=bash
# Sourced by scripts/image-*.sh: podman settings for this machine, kept under build/image/
# (nothing in /etc is changed).
#   - the OCI runtime is runc: crun fails on a hybrid cgroup v1/v2 layout;
#   - default_ulimits: podman's defaults (nofile above the hard limit) cannot be set here, so
#     nofile is this shell's hard limit and nproc 32768.
# podman reads the file through CONTAINERS_CONF, so every podman call of these scripts uses it.
IMAGE_WORK=${IMAGE_WORK:-$PWD/build/image}
mkdir -p "$IMAGE_WORK"
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1048576
cat >"$IMAGE_WORK/containers.conf.new" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=32768:32768"]

[engine]
runtime = "runc"
CONF
mv "$IMAGE_WORK/containers.conf.new" "$IMAGE_WORK/containers.conf"
export CONTAINERS_CONF=$IMAGE_WORK/containers.conf

# The image names. BUILD_IMAGE/RUNTIME_IMAGE, when set, are the Dockerfile's base images;
# otherwise scripts/image-base.sh picks python:3.11(-slim) or builds local Debian bases.
IMAGE=${IMAGE:-localhost/pointsman:latest}
# shellcheck disable=SC2034  # read by the scripts that source this file
LOCAL_RUNTIME_BASE=localhost/pointsman-base:runtime
# shellcheck disable=SC2034
LOCAL_BUILD_BASE=localhost/pointsman-base:build

# Wait while a benchmark is measuring (/tmp/bench.lock exists): builds and checks are
# CPU-heavy and the drain check times a stop. At most IMAGE_BENCH_WAIT seconds (default
# 3600), then give up: a lock that old is more likely stale than a benchmark still running.
wait_for_bench() {
    local limit=${IMAGE_BENCH_WAIT:-3600} end
    [[ -e /tmp/bench.lock ]] || return 0
    echo "image: /tmp/bench.lock exists, waiting up to $limit s for the benchmark" >&2
    end=$((SECONDS + limit))
    while [[ -e /tmp/bench.lock ]]; do
        if ((SECONDS >= end)); then
            echo "image: /tmp/bench.lock still there after $limit s (remove it if no benchmark runs)" >&2
            exit 1
        fi
        sleep 10
    done
}

# For the check scripts: CHECK_NAME names the script in its failure line, CHECK_WIDTH is the
# width of the check-name column; `failed` collects the checks that failed.
die() {  # message: the one line that says why, and exit 1
    echo "${CHECK_NAME:-image}: FAILED: $*" >&2
    exit 1
}
result() {  # ok|FAIL what detail
    printf "%-4s %-${CHECK_WIDTH:-9}s %s\n" "$1" "$2" "$3"
    [[ $1 == ok ]] || failed+=("$2")
}
