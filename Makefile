# The two commands a newcomer needs: `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The per-request modules, compiled in place to C extensions by mypyc (see setup.py).
HOT_MODULES := proxy/http1.py proxy/access_log.py proxy/request.py proxy/upstream.py proxy/router.py proxy/metrics.py proxy/stats.py proxy/shadow.py proxy/shadow_records.py proxy/shadow_registry.py proxy/tls_transport.py
COMPILED := proxy/.compiled

.PHONY: run fleet test lint typecheck unit bench build clean fuzz image compose-check

$(STAMP): pyproject.toml requirements-dev.txt setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements-dev.txt
	POINTSMAN_PURE=1 $(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	# The compiled modules' shared runtime lands at the top of the tree: put it on the path.
	$(BIN)/python -c 'import site, sys; open(site.getsitepackages()[0] + "/pointsman-tree.pth", "w").write(sys.argv[1] + "\n")' "$(CURDIR)"
	touch $(STAMP)

build: $(COMPILED)

# Rebuilt whenever a hot module changes, so nothing runs a stale extension.
$(COMPILED): $(STAMP) $(HOT_MODULES)
	rm -f proxy/*.so *__mypyc*.so
	$(BIN)/mypyc $(HOT_MODULES) > build-mypyc.log 2>&1 || (cat build-mypyc.log; exit 1)
	rm -f build-mypyc.log
	touch proxy/*.so  # setuptools keeps the build copy's time; the guard in tests compares times
	touch $(COMPILED)

run: $(COMPILED)
	bash scripts/run-demo.sh

# Two members sharing one routing state in a local etcd (scripts/run-fleet.sh).
fleet: $(COMPILED)
	bash scripts/need.sh etcd etcd-server
	bash scripts/need.sh curl curl
	bash scripts/run-fleet.sh

test: lint typecheck unit

lint: $(STAMP)
	$(BIN)/ruff check proxy control tests benchmarks fuzz
	$(BIN)/ruff format --check proxy control tests benchmarks fuzz

typecheck: $(STAMP)
	$(BIN)/mypy proxy control

# The tests start their own etcd (tests/etcd_server.py) and Prometheus (the dashboard's
# queries; promtool checks the alert rules), run `pointsman top` in tmux and attack with
# slowhttptest.
unit: $(COMPILED)
	bash scripts/need.sh etcd etcd-server
	bash scripts/need.sh promtool prometheus
	bash scripts/need.sh tmux tmux
	bash scripts/need.sh slowhttptest slowhttptest
	$(BIN)/pytest -q -p no:cacheprovider

bench: $(COMPILED)
	bash benchmarks/run.sh

# Coverage-guided fuzzing (atheris) of the request path, then the response path: FUZZ_SECONDS
# in all, half each, on the Python sources, since atheris instruments Python code only and
# sees nothing inside the mypyc-compiled modules (fuzz/README.md). Not part of `make test`,
# which replays the corpus and regressions (tests/test_fuzz_smoke.py).
FUZZ_SECONDS ?= 600
fuzz: $(STAMP)
	POINTSMAN_PURE=1 $(BIN)/python -m fuzz.run --seconds $(FUZZ_SECONDS)

# The container image (README, "Containers"), built with podman on python:3.11 or, where that
# cannot be pulled, on local Debian bases (scripts/image-base.sh); then run and checked:
# proxying, non-root, compiled modules, drain on `podman stop` (scripts/image-check.sh).
image:
	bash scripts/need.sh podman podman
	bash scripts/need.sh buildah buildah
	bash scripts/need.sh debootstrap debootstrap
	bash scripts/need.sh runc runc
	bash scripts/image-build.sh
	bash scripts/image-check.sh

# compose.yaml (two members sharing etcd, demo upstreams, Prometheus) up with podman-compose,
# checked and taken down again (scripts/image-compose-check.sh).
compose-check: image
	bash scripts/need.sh podman-compose podman-compose
	bash scripts/image-compose-check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis var benchmarks/work build
	rm -f proxy/*.so *__mypyc*.so $(COMPILED)
