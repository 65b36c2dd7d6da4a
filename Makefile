# fleetreg: every target installs what it needs on a fresh machine and is safe to run twice.
# See ../shared/spec/contract.md for what each one promises.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
STACK  := deploy/local/stack.sh

.PHONY: venv up down status demo test test-unit bench fuzz lint chaos compose-test agent-package agent-package-test role-matrix

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $@

up: venv
	@$(STACK) up

down:
	@$(STACK) down
	@deploy/local/keycloak.sh stop

status:
	@$(STACK) status

demo: up
	@$(VENV)/bin/fleetreg demo

# The single sign-on tests' identity provider (Keycloak) is fetched here, started once by the
# tests' keycloak fixture and stopped at the end of the run (deploy/local/keycloak.sh).
test: venv
	@$(STACK) infra-up
	@deploy/local/browser.sh
	@deploy/local/agent-shells.sh
	@deploy/local/keycloak.sh fetch
	@$(PY) -m pytest

test-unit: venv
	@$(PY) -m pytest tests/unit

# Storms, open loop, bulk beside COPY, two instances, ceilings: see docs/performance.md.
# Options: make bench BENCH_ARGS="--devices 20000 --bulk-rows 100000" (python -m tests.bench --help);
# only the device agent's part (its boots, a 500-agent storm beside the simulator's): BENCH_ARGS="--agents-only".
BENCH_ARGS ?=
bench: up
	@$(PY) -m tests.bench $(BENCH_ARGS)

# The OpenAPI fuzzing of make test (25 examples an operation), 300 examples an operation.
fuzz: venv
	@$(STACK) infra-up
	@FLEETREG_FUZZ_EXAMPLES=300 $(PY) -m pytest tests/e2e/test_openapi_fuzz.py

# Faults during a boot storm and a bulk publish, on a stack of its own (var/chaos-stack,
# ports + 1000): see docs/chaos.md. Options: make chaos CHAOS_ARGS="--devices 2000 --bulk-rows 20000".
CHAOS_ARGS ?=
chaos: venv
	@$(PY) -m tests.chaos $(CHAOS_ARGS)

# The container path (docs/operations.md, "Running with containers"): the images built from
# Debian's packages and Maven Central, the real docker-compose.yml under podman, through its
# published ports. COMPOSE_SCALE=short is CI's form (200 devices, 100 rows, up and down).
COMPOSE_SCALE ?= full
compose-test: venv
	@deploy/container/images.sh all
	@deploy/local/browser.sh
	@FLEETREG_COMPOSE_TEST=1 FLEETREG_COMPOSE_SCALE=$(COMPOSE_SCALE) $(PY) -m pytest -s tests/compose

# The device agent's release files (docs/device-agent.md, "Packaging"): the Debian package
# (dpkg-deb) and the tarball, into dist/. Options: make agent-package FLEETREG_AGENT_VERSION=1.2.3
agent-package:
	@agent/packaging/build.sh

# The .deb installed into a Debian root made by Debian's mmdebstrap (installed when missing;
# the root is cached under var/cache/agent-test-root), a device booted in it against the
# running system. Needs root. make test checks the package itself (tests/unit/test_agent_package.py).
agent-package-test: venv
	@$(STACK) infra-up
	@agent/packaging/test-root.sh >/dev/null
	@FLEETREG_AGENT_PACKAGE_TEST=1 $(PY) -m pytest tests/agent_package

# docs/security.md's role x route matrix, from the OpenAPI documents' x-fleetreg-role
# (tests/unit/test_role_matrix.py fails while it is stale).
role-matrix: venv
	@$(PY) deploy/tools/role_matrix.py

lint: venv
	@$(VENV)/bin/ruff check .
	@$(VENV)/bin/mypy
	@$(VENV)/bin/lint-imports
