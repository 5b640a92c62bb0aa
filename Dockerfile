# Pointsman image. Build:  docker build -t pointsman .
# Run (the config's listen addresses must be 0.0.0.0, see config/examples/canary.yaml):
#   docker run --rm -p 8080:8080 -p 8081:8081 \
#     -v "$PWD/config/examples/canary.yaml:/etc/pointsman/pointsman.yaml:ro" pointsman
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Install the package; requirements-dev.txt is used only as a constraints file, so the
# runtime dependencies get the versions the test suite runs with (no test tools are installed).
WORKDIR /tmp/pointsman-src
COPY pyproject.toml README.md requirements-dev.txt ./
COPY proxy/ proxy/
COPY control/ control/
RUN pip install -c requirements-dev.txt . \
    && cd / && rm -rf /tmp/pointsman-src

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
