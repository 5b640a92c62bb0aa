# Pointsman image. Build:  docker build -t pointsman .   (or `make image`, which builds with
# podman, runs the image and checks it; see README, "Containers")
# Run (the config's listen addresses must be 0.0.0.0, see config/examples/canary.yaml; an
# admin listener off loopback needs a token):
#   docker run --rm -p 8080:8080 -p 8081:8081 -e POINTSMAN_TOKEN=change-me \
#     -v "$PWD/config/examples/canary.yaml:/etc/pointsman/pointsman.yaml:ro" pointsman
#
# The base images are build arguments. Any pair works whose runtime image has the same
# python3 (3.11 or later) as the build image, at the same path, with the venv module:
# python:3.11 / python:3.11-slim (the defaults), or a Debian with python3 and python3-venv
# (plus gcc, libc6-dev and python3-dev for the build image), such as the local bases that
# `make image` makes when the defaults cannot be pulled. Everything is installed into a
# venv, /opt/pointsman, never into the system Python (Debian's refuses, PEP 668).
ARG BUILD_IMAGE=python:3.11
ARG RUNTIME_IMAGE=python:3.11-slim

# Build stage: compiles the data plane's hot modules with mypyc (needs a C compiler, which
# the runtime image lacks) into a wheel, and installs it into the venv the runtime stage
# copies. mypyc's extensions are tied to the interpreter that built them: the venv's.
FROM ${BUILD_IMAGE} AS build
# pip settings for the build only (none reach the runtime image): an index other than PyPI,
# and a CA bundle for a TLS-inspecting proxy (make image passes the host's). Empty: unset.
ARG PIP_INDEX_URL=
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_TRUSTED_HOST=
ARG PIP_CERT=
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# /opt/build: the build tools; /opt/pointsman: what the image runs.
RUN python3 -m venv /opt/build && python3 -m venv /opt/pointsman
COPY pyproject.toml requirements-dev.txt ./
# The runtime dependencies come from pyproject.toml, at the versions the test suite runs
# with (requirements-dev.txt as constraints only). mypyc type-checks what it compiles, so
# the build venv gets them too, with the stubs. This layer is cached until those two files
# change (setup.py and README.md, which only the wheel needs, come after it).
RUN for v in PIP_INDEX_URL PIP_EXTRA_INDEX_URL PIP_TRUSTED_HOST PIP_CERT; do \
        eval "[ -n \"\$$v\" ] || unset $v"; \
    done \
    && /opt/build/bin/python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > /tmp/deps.txt \
    && /opt/pointsman/bin/pip install -q -c requirements-dev.txt -r /tmp/deps.txt \
    && /opt/build/bin/pip install -q -c requirements-dev.txt -r /tmp/deps.txt \
        mypy types-PyYAML "setuptools>=68" wheel
COPY setup.py README.md ./
COPY proxy/ proxy/
COPY control/ control/
RUN /opt/build/bin/pip wheel -q --no-build-isolation --no-deps -w /wheels . \
    && /opt/pointsman/bin/pip install -q --no-index --no-deps /wheels/*.whl \
    && /opt/pointsman/bin/pip uninstall -q -y pip setuptools

FROM ${RUNTIME_IMAGE}

ENV PATH=/opt/pointsman/bin:$PATH \
    VIRTUAL_ENV=/opt/pointsman \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

COPY --from=build /opt/pointsman /opt/pointsman
# Fails the build when this interpreter cannot load what the build stage compiled.
RUN python -c 'import sys, proxy.http1 as m; sys.exit(0 if m.__file__.endswith(".so") else "not compiled: " + m.__file__)' \
    && pointsman --help >/dev/null

# Run as an unprivileged user; its home is the working directory (relative paths such as
# the default state.path, var/state.json, resolve under it).
RUN groupadd --system pointsman \
    && useradd --system --gid pointsman --home-dir /var/lib/pointsman --create-home \
        --shell /usr/sbin/nologin pointsman
WORKDIR /var/lib/pointsman
USER pointsman

# Data plane and admin (/metrics, /healthz).
EXPOSE 8080 8081

# SIGTERM starts a graceful drain: in-flight requests get timeouts.grace to finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pointsman"]
CMD ["run", "--config", "/etc/pointsman/pointsman.yaml"]
