# Pointsman image. Build:  docker build -t pointsman .
# Run (the config's listen addresses must be 0.0.0.0, see config/examples/canary.yaml; an
# admin listener off loopback needs a token):
#   docker run --rm -p 8080:8080 -p 8081:8081 -e POINTSMAN_TOKEN=change-me \
#     -v "$PWD/config/examples/canary.yaml:/etc/pointsman/pointsman.yaml:ro" pointsman
# Build stage: compiles the data plane's hot modules with mypyc (needs a C compiler, which
# the slim image lacks) into a wheel.
FROM python:3.11 AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md requirements-dev.txt ./
COPY proxy/ proxy/
COPY control/ control/
# mypyc type-checks what it compiles, so the runtime libraries and stubs come first.
RUN pip install --no-cache-dir -c requirements-dev.txt mypy types-PyYAML "setuptools>=68" wheel \
        aiohttp uvloop httptools prometheus-client pyyaml orjson \
    && pip wheel --no-cache-dir --no-build-isolation --no-deps -w /wheels .

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# requirements-dev.txt is used only as a constraints file, so the runtime dependencies get
# the versions the test suite runs with (no test tools are installed).
COPY --from=build /wheels /tmp/wheels
COPY requirements-dev.txt /tmp/
RUN pip install -c /tmp/requirements-dev.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/requirements-dev.txt

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
