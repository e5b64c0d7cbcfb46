# airflow-pg-replication: `make demo` and `make test` do all the set-up a fresh machine needs.
#
#   make demo    end-to-end demo: throwaway PostgreSQL -> Airflow DAGs (snapshot, capture, CDC) -> DuckDB
#   make demo-airflow  the same in a real Airflow (scheduler, triggerer, UI) with live writes, until Ctrl-C
#   make test    the whole test suite (unit + integration against a throwaway PostgreSQL)
#   make lint    ruff (lint + format check) and mypy on the package
#   make venv    just the virtualenv (.venv, with uv; re-run is a no-op until pyproject.toml changes)
#   make clean   remove caches and the virtualenv

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(VENV)/bin/uv
STAMP  := $(VENV)/.installed

export UV_LINK_MODE ?= copy

.DEFAULT_GOAL := help
.PHONY: help venv .venv postgres docker-compose lint test demo demo-airflow clean

help:
	@echo "make demo   - run the end-to-end demo (PostgreSQL -> Airflow -> DuckDB, then compare)"
	@echo "make demo-airflow - a real Airflow with its UI replicating two tables every minute, with live writes (Ctrl-C stops)"
	@echo "make test   - run all tests"
	@echo "make lint   - ruff check, ruff format --check and mypy"
	@echo "make venv   - create $(VENV) and install the package with its test extras"
	@echo "make clean  - remove $(VENV) and caches"

venv .venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "error: '$(PYTHON)' must be Python >= 3.10 (set PYTHON=python3.11, for example)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv"; exit 1; }
	$(PY) -m pip install --quiet --disable-pip-version-check uv
	$(UV) pip install --quiet --compile-bytecode --python $(PY) -e '.[test]'
	@touch $@

# PostgreSQL server binaries (initdb, pg_ctl, postgres) for the throwaway test/demo clusters:
# the system's if found; else Debian's postgresql package (root + apt-get); else PyPI's pgserver.
postgres: $(STAMP)
	@if $(PY) -c 'from airflow_pg_replication.testing.throwaway_cluster import find_server_bindir as f; f()' 2>/dev/null; then \
	  exit 0; \
	fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "No PostgreSQL server binaries found: apt-get install -y postgresql"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) \
	    || echo "apt-get install postgresql failed; trying pgserver from PyPI"; \
	fi; \
	if ! $(PY) -c 'from airflow_pg_replication.testing.throwaway_cluster import find_server_bindir as f; f()' 2>/dev/null; then \
	  echo "No PostgreSQL server binaries found: installing pgserver (bundled PostgreSQL) into $(VENV)"; \
	  $(UV) pip install --quiet --python $(PY) pgserver; \
	fi; \
	$(PY) -c 'from airflow_pg_replication.testing.throwaway_cluster import find_server_bindir as f; print("PostgreSQL server binaries:", f())'

# Best effort: docker-compose lets tests/unit/test_docker_compose.py validate docker-compose.yaml
# (`docker-compose config -q`); without it that one check is skipped.
docker-compose:
	@if ! command -v docker-compose >/dev/null 2>&1 && ! docker compose version >/dev/null 2>&1 \
	    && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "Installing docker-compose (apt-get) to validate docker-compose.yaml"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null) \
	    || echo "docker-compose not installed; its check will be skipped"; \
	fi

LINT_PATHS := airflow_pg_replication tests scripts dags

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)
	$(VENV)/bin/mypy

test: $(STAMP) postgres docker-compose
	$(PY) -m pytest -q

demo: $(STAMP) postgres
	$(PY) scripts/demo.py

# DEMO_ARGS, e.g. DEMO_ARGS="--port 8081 --every 10 --no-login"; see scripts/demo_airflow.py --help
demo-airflow: $(STAMP) postgres
	$(PY) scripts/demo_airflow.py $(DEMO_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
