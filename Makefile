# Leadline: `make run` (the whole suite on loopback) and `make test` (every test on real parts).
SHELL := /bin/bash
UV := $(shell command -v uv 2>/dev/null || echo python3 -m uv)
# make test runs the tests on this many pytest-xdist workers (each starts its own servers; see conftest.py);
# one hash seed for all, so that a test parametrized from a set is collected alike by each
PYTEST_WORKERS ?= 2

.PHONY: run test check mypy demo setup system-deps asyncapi

setup:
	@command -v uv >/dev/null 2>&1 || python3 -m uv --version >/dev/null 2>&1 || \
	  python3 -m pip install --quiet uv || python3 -m pip install --quiet --user --break-system-packages uv
	@$(UV) sync --frozen --quiet

system-deps:
	@./deploy/install-system-deps

run: setup
	@$(UV) run python deploy/run.py

test: setup system-deps
	@PYTHONHASHSEED=0 $(UV) run pytest -n $(PYTEST_WORKERS) --dist loadfile

check: setup
	@$(UV) run ruff check .
	@$(UV) run ruff format --check .
	@$(UV) run lint-imports --no-cache
	@$(UV) run python -m tools.lint
	@$(MAKE) --no-print-directory mypy

# .pre-commit-config.yaml runs the same checks as `check`, mypy through this target
mypy: setup
	@$(UV) run mypy proto/src kit/src mail/src gateway/src lead-service/src quota-service/src sync-service/src send-service/src \
	  tools/lint
	@# one run per test directory: their conftest modules share a name
	@for tests in proto/tests kit/tests mail/tests gateway/tests lead-service/tests quota-service/tests \
	  sync-service/tests send-service/tests tests tools/tests; do \
	  $(UV) run mypy $$tests || exit 1; done

asyncapi: setup
	@$(UV) run python -m leadline_proto.asyncapi > proto/asyncapi.json

demo: setup system-deps
	@$(UV) run python deploy/demo.py
