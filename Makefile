# corral: two set-up commands. `make run` starts the daemon on 127.0.0.1; `make test` runs
# ruff, mypy and the whole pytest suite. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench bench-webhook clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/corral serve

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# Debian's chromium and its driver, for the admin console's browser tests (tests/console/);
# installed (apt-get, as root) only when either is missing.
.PHONY: chromium
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		(apt-get update && apt-get install -y chromium chromium-driver)

# Debian's PostgreSQL server binaries, for the store tests (tests/pg/ start a throw-away cluster);
# installed (apt-get, as root) only when neither PATH nor /usr/lib/postgresql/*/bin has pg_ctl.
.PHONY: postgresql
postgresql:
	@command -v pg_ctl >/dev/null || ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || \
		(apt-get update && apt-get install -y postgresql)

pytest: $(STAMP) chromium postgresql
	$(BIN)/python -m pytest -q

test: lint typecheck pytest

bench: $(STAMP)
	$(BIN)/python bench/rpc.py

# bench/webhook.py installs wrk itself (apt-get, as root) when it is missing
bench-webhook: $(STAMP)
	$(BIN)/python bench/webhook.py

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .pytest_cache .ruff_cache
