#!/usr/bin/env bash
# image-base.sh: choose the Dockerfile's base images and write them to build/image/bases.env
# (BUILD_IMAGE=..., RUNTIME_IMAGE=...), for scripts/image-build.sh.
#
#   1. BUILD_IMAGE and RUNTIME_IMAGE from the environment, when both are set;
#   2. else python:3.11 and python:3.11-slim, when they are here or can be pulled;
#   3. else local bases built from Debian packages, once (kept in podman's storage):
#        localhost/pointsman-base:runtime  debootstrap --variant=minbase of the host's Debian
#                                          suite, from the host's apt mirror, with python3,
#                                          python3-venv and ca-certificates;
#        localhost/pointsman-base:build    the same plus gcc, libc6-dev and python3-dev.
#      Both have the same interpreter (the suite's python3), so what mypyc compiles in the
#      build stage loads in the runtime stage. REBUILD_BASE=1 builds them again.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image-env.sh disable=SC1091
source scripts/image-env.sh

out=$IMAGE_WORK/bases.env
write_bases() {
    printf 'BUILD_IMAGE=%s\nRUNTIME_IMAGE=%s\n' "$1" "$2" >"$out"
    echo "image: base images $1 (build), $2 (runtime)"
}

if [[ -n ${BUILD_IMAGE:-} && -n ${RUNTIME_IMAGE:-} ]]; then
    write_bases "$BUILD_IMAGE" "$RUNTIME_IMAGE"
    exit 0
fi

have_or_pull() {
    podman image exists "$1" || timeout 600 podman pull -q "$1" >/dev/null 2>&1
}
if [[ -z ${REBUILD_BASE:-} ]] &&
    have_or_pull docker.io/library/python:3.11 && have_or_pull docker.io/library/python:3.11-slim; then
    write_bases docker.io/library/python:3.11 docker.io/library/python:3.11-slim
    exit 0
fi

if [[ -z ${REBUILD_BASE:-} ]] &&
    podman image exists "$LOCAL_RUNTIME_BASE" && podman image exists "$LOCAL_BUILD_BASE"; then
    write_bases "$LOCAL_BUILD_BASE" "$LOCAL_RUNTIME_BASE"
    exit 0
fi

# The host's Debian suite and the mirror its apt uses for it (one-line .list files or
# deb822 .sources files).
# shellcheck source=/dev/null
source /etc/os-release
suite=${VERSION_CODENAME:?/etc/os-release names no VERSION_CODENAME}
mirror=$(python3 - "$suite" <<'PY'
import glob, sys
suite = sys.argv[1]
found = []
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # [options]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            found.append(words[0])
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if ":" in line and not line.startswith(("#", " ")):
                key, value = line.split(":", 1)
                fields[key.strip().lower()] = value.split()
        if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                and fields.get("enabled", ["yes"]) != ["no"] and fields.get("uris")):
            found.append(fields["uris"][0])
print(found[0] if found else "")
PY
)
[[ -n $mirror ]] || { echo "image: no apt source for suite $suite in /etc/apt/sources.list*" >&2; exit 1; }

bash scripts/need.sh debootstrap debootstrap
wait_for_bench
root=$IMAGE_WORK/rootfs
# The tree is removed on the way out, whatever happened; a debootstrap that was cut short
# can leave /proc or /sys mounted in it, so those go first and rm stays on this file system.
remove_root() {
    local m
    for m in "$root/proc" "$root/sys" "$root/dev/pts"; do
        mountpoint -q "$m" 2>/dev/null && umount -l "$m"
    done
    rm -rf --one-file-system "$root"
}
trap remove_root EXIT
trap 'exit 130' INT TERM
remove_root
echo "image: debootstrap $suite from $mirror (a few minutes)"
start=$SECONDS
timeout 1800 debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
    "$suite" "$root" "$mirror" >"$IMAGE_WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$IMAGE_WORK/debootstrap.log"; echo "image: debootstrap failed (whole log: $IMAGE_WORK/debootstrap.log)" >&2; exit 1; }

# What a container gets from its engine, or needs no copy of.
strip_root() {
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* \
        "$root"/var/log/*.log "$root"/var/cache/debconf/*-old \
        "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/*
    : >"$root/etc/resolv.conf"
    : >"$root/etc/hostname"
}
import_root() {  # name
    tar --numeric-owner --exclude=./dev/* --exclude=./proc/* --exclude=./sys/* -C "$root" -c . |
        podman import -q --change 'ENV LANG=C.UTF-8' --change 'CMD ["/bin/bash"]' - "$1" >/dev/null
    echo "image: $1 imported ($(podman image inspect --format '{{.Size}}' "$1" | numfmt --to=iec))"
}
strip_root
import_root "$LOCAL_RUNTIME_BASE"

# The build base: the same tree plus a C compiler and Python's headers.
cp /etc/resolv.conf "$root/etc/resolv.conf"
timeout 1200 chroot "$root" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends gcc libc6-dev python3-dev' \
    >>"$IMAGE_WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$IMAGE_WORK/debootstrap.log"; echo "image: installing the build tools in the base failed" >&2; exit 1; }
strip_root
import_root "$LOCAL_BUILD_BASE"
remove_root
echo "image: local bases built in $((SECONDS - start)) s"
echo "image: the bases have $(podman run --rm --network host "$LOCAL_RUNTIME_BASE" python3 --version)"
write_bases "$LOCAL_BUILD_BASE" "$LOCAL_RUNTIME_BASE"
