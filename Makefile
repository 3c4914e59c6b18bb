# Inventiv Agents — the two commands: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
UV := $(shell command -v uv 2>/dev/null || echo $(VENV)/bin/uv)
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
TEST_REDIS_URL ?= redis://127.0.0.1:6379/0
# Parallel test workers (pytest-xdist): one more than the cores, since most tests wait on
# subprocesses (2 cores: 3 workers, 9.0 min against 9.9 with 2); PYTEST_WORKERS=0 runs serially.
PYTEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 1) + 1 )))
PYTEST_ARGS ?=

.PHONY: help demo demo-stop test install install-dev services lint typecheck bench lock clean

$(VENV)/bin/python:
	@command -v $(PYTHON) >/dev/null || { echo "Python 3.11 is required ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	@command -v uv >/dev/null || $(VENV)/bin/pip install -q uv==0.13.9

$(VENV)/.base-installed: requirements/base.txt requirements/agent.txt | $(VENV)/bin/python
	$(UV) pip install -q --python $(PY) -r requirements/base.txt -r requirements/agent.txt
	@touch $@

$(VENV)/.dev-installed: requirements/dev.txt $(VENV)/.base-installed
	$(UV) pip install -q --python $(PY) -r requirements/dev.txt
	@touch $@

## Create .venv and install the platform's pinned requirements (base, agent).
install: $(VENV)/.base-installed
## Install the development requirements too (pytest, ruff, mypy, import-linter, pre-commit).
install-dev: $(VENV)/.dev-installed

## List the targets, one line each (from the `## ` comment above each target).
help:
	@awk '/^## /{doc=substr($$0,4); next} /^[a-z][a-z-]*:/{if (doc != "") {split($$0, t, ":"); printf "  make %-12s %s\n", t[1], doc}} {doc=""}' $(MAKEFILE_LIST)

# One Python start; system checks skipped (about a second; `make test` runs them).
## The whole platform in one process (SQLite, in-process broker, local provider, mock engine).
demo: install
	@env -u DATABASE_URL -u REDIS_URL $(PY) manage.py run_embedded --demo --skip-checks --port $(PORT)

## Stop the demo's local agent, which `make demo` leaves running for its next start.
demo-stop: install
	@env -u DATABASE_URL -u REDIS_URL $(PY) manage.py run_embedded --stop-agents

## Start PostgreSQL and Redis when they are not running (Debian service layout).
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start
	@redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1 || redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
	@for i in $$(seq 1 30); do pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 ping >/dev/null 2>&1 && exit 0; sleep 1; done; echo "PostgreSQL/Redis did not start"; exit 1

## Every check: ruff lint and format, mypy, import contracts, then pytest on real PostgreSQL and Redis.
test: install-dev services
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy agent apps inventiv
	$(VENV)/bin/lint-imports --no-cache
	DATABASE_URL=$(TEST_DATABASE_URL) REDIS_URL=$(TEST_REDIS_URL) $(VENV)/bin/pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

## ruff (lint and format check) and the import-linter contracts, without the tests.
lint: install-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache

## mypy on agent, apps and inventiv.
typecheck: install-dev
	$(VENV)/bin/mypy agent apps inventiv

## The gateway benchmark (bench/gateway.py); the others run as python -m bench.<name>.
bench: install-dev
	$(PY) -m bench.gateway

## Re-pin requirements/*.txt from requirements/*.in.
lock:
	$(UV) pip compile -q requirements/base.in -o requirements/base.txt --python-version 3.11
	$(UV) pip compile -q requirements/agent.in -o requirements/agent.txt --python-version 3.11
	$(UV) pip compile -q requirements/dev.in -o requirements/dev.txt --python-version 3.11

## Remove .venv, the embedded state (.inventiv) and the tool caches.
clean:
	rm -rf $(VENV) .inventiv .pytest_cache .mypy_cache .ruff_cache
