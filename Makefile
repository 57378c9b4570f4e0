# Two commands matter: `make run` (the service locally, on a throwaway Samba AD DC) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages run test lint typecheck unit clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Samba provides the real Active Directory domain controller the service and the tests talk to.
system-packages:
	@if ! command -v samba >/dev/null || ! command -v samba-tool >/dev/null || ! command -v ldbsearch >/dev/null; then \
	  echo "installing samba (AD DC for local runs and tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq samba ldb-tools >/dev/null; \
	fi

setup: $(VENV)/.installed system-packages

run: setup
	$(BIN)/lifecycle dev

lint: setup
	$(BIN)/ruff check .

typecheck: setup
	$(BIN)/mypy

unit: setup
	$(BIN)/python -m pytest tests/unit -q

test: setup
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) .local .mypy_cache .pytest_cache .ruff_cache
