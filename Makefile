# Every target does its own set-up: a virtual environment in .venv, installed from the lock
# (requirements/dev.txt: every package pinned, with hashes) and nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install lock lock-check module-map run test test-fast lint bench bench-http bench-import bench-seed \
	bench-faults image image-test clean

install: $(STAMP)

# The environment is made anew whenever the lock or pyproject.toml changes, so it holds exactly
# the lock: nothing left over from an older one. pip checks every file against the lock's
# hashes and resolves nothing (--no-deps); Postal itself is then built, editable, by the
# setuptools the lock pinned (--no-build-isolation: no unpinned build backend is fetched), with
# the test rigs (testing/) and the benchmarks (bench/), which are not part of its wheel.
$(STAMP): pyproject.toml bench/pyproject.toml testing/pyproject.toml requirements/dev.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e . -e testing -e bench
	$(BIN)/python -m pip check  # a lock that lacks a dependency fails here, not in a test
	touch $(STAMP)

# The newest versions pyproject.toml allows, into requirements/; then `make test` says whether
# the upgrade is safe. After editing pyproject.toml's dependencies without wanting upgrades,
# `scripts/lock.py compile` re-resolves and keeps every other pin.
lock: install
	$(BIN)/python scripts/lock.py upgrade

# docs/architecture.md's module map, made anew from the modules' docstrings (a test checks it).
module-map: install
	$(BIN)/python -m tests.support.module_map

# Fails when pyproject.toml and the lock disagree; offline.
lock-check: install
	$(BIN)/python scripts/lock.py check

run: install
	$(BIN)/postal serve

lint: lock-check
	$(BIN)/ruff check src tests bench testing scripts/lock.py scripts/image.py
	$(BIN)/ruff format --check src tests bench testing scripts/lock.py scripts/image.py
	$(BIN)/mypy
	$(BIN)/mypy --strict scripts/lock.py scripts/image.py
	$(BIN)/lint-imports --no-cache  # the arrows between rooms: [tool.importlinter] in pyproject

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

# The container image, postal:<version> (IMAGE=... to name it otherwise), built with podman from
# the Dockerfile. No registry needed: when podman lacks the base image the Dockerfile names, it is
# made from Debian's packages with mmdebstrap. podman, runc and mmdebstrap are installed with
# apt-get when missing and running as root. See docs/deploy.md.
image: install
	$(BIN)/python scripts/image.py build

# Builds the image (leaving nothing behind), then runs it as deployed against the Redis on
# 127.0.0.1:6379 and the PostgreSQL on 127.0.0.1:5432: a few minutes, so not part of `make test`
# (where tests/image skips unless POSTAL_IMAGE_TEST=1).
image-test: install
	POSTAL_IMAGE_TEST=1 $(BIN)/pytest -s -p no:cacheprovider tests/image  # -s: the build's progress

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
