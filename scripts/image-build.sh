#!/usr/bin/env bash
# image-build.sh [--compose]: build the Pointsman image ($IMAGE, default
# localhost/pointsman:latest) with podman from the Dockerfile, on the base images
# scripts/image-base.sh chooses (python:3.11 and -slim, or local Debian bases).
# --compose also builds the images compose.yaml uses besides Pointsman's: etcd and
# Prometheus from Debian's packages, on the same runtime base (container/*.Containerfile).
#
# pip inside the build reaches its index through this host's settings: the CA bundle is
# bind-mounted read-only at its own path and named by PIP_CERT, and an http(s) index from
# PIP_INDEX_URL / PIP_EXTRA_INDEX_URL / PIP_TRUSTED_HOST or the host's pip config is passed
# as a build argument. The build and its RUN steps use the host's network.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/image-env.sh disable=SC1091
source scripts/image-env.sh

bash scripts/image-base.sh
# shellcheck source=/dev/null  # written by scripts/image-base.sh
source "$IMAGE_WORK/bases.env"

args=(--network host --build-arg "BUILD_IMAGE=$BUILD_IMAGE" --build-arg "RUNTIME_IMAGE=$RUNTIME_IMAGE")

bundle=
for candidate in "${PIP_CERT:-}" "${REQUESTS_CA_BUNDLE:-}" "${SSL_CERT_FILE:-}" \
    /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt; do
    if [[ -n $candidate && -f $candidate ]]; then bundle=$(readlink -f "$candidate") && break; fi
done
if [[ -n $bundle ]]; then
    args+=(-v "$bundle:$bundle:ro" --build-arg "PIP_CERT=$bundle")
fi

host_pip() {  # the host's pip setting KEY (global.index-url ...), if it is an http(s) URL list
    local pip value
    for pip in .venv/bin/pip pip3; do
        command -v "$pip" >/dev/null 2>&1 || continue
        value=$("$pip" config get "$1" 2>/dev/null) || continue
        # file:// indexes and find-links are paths on this host, not in the build
        value=$(tr ' ' '\n' <<<"$value" | grep -E '^https?://' | paste -sd ' ' || true)
        [[ -n $value ]] && echo "$value"
        return 0
    done
}
index=${PIP_INDEX_URL:-$(host_pip global.index-url)}
extra=${PIP_EXTRA_INDEX_URL:-$(host_pip global.extra-index-url)}
trusted=${PIP_TRUSTED_HOST:-$(host_pip global.trusted-host)}
[[ -n $index ]] && args+=(--build-arg "PIP_INDEX_URL=$index")
[[ -n $extra ]] && args+=(--build-arg "PIP_EXTRA_INDEX_URL=$extra")
[[ -n $trusted ]] && args+=(--build-arg "PIP_TRUSTED_HOST=$trusted")

wait_for_bench
start=$SECONDS
echo "image: podman build -t $IMAGE (CA bundle ${bundle:-none}, index ${index:-PyPI})"
# A cold build takes about 5 minutes on 2 cores, a cached one seconds; 30 minutes is a hang.
if ! timeout 1800 podman build "${args[@]}" -t "$IMAGE" -f Dockerfile . >"$IMAGE_WORK/build.log" 2>&1; then
    tail -40 "$IMAGE_WORK/build.log"
    echo "image: build failed (whole log: $IMAGE_WORK/build.log)" >&2
    exit 1
fi
echo "image: built $IMAGE in $((SECONDS - start)) s," \
    "$(podman image inspect --format '{{.Size}}' "$IMAGE" | numfmt --to=iec)"

if [[ ${1:-} == --compose ]]; then
    for name in etcd prometheus; do
        wait_for_bench
        start=$SECONDS
        timeout 1200 podman build --network host --build-arg "BASE=$RUNTIME_IMAGE" \
            -t "localhost/pointsman-$name:latest" -f "container/$name.Containerfile" container \
            >"$IMAGE_WORK/build-$name.log" 2>&1 || {
            tail -40 "$IMAGE_WORK/build-$name.log"
            echo "image: build of localhost/pointsman-$name failed (whole log: $IMAGE_WORK/build-$name.log)" >&2
            exit 1
        }
        echo "image: built localhost/pointsman-$name:latest in $((SECONDS - start)) s," \
            "$(podman image inspect --format '{{.Size}}' "localhost/pointsman-$name:latest" | numfmt --to=iec)"
    done
fi
