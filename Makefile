# Two commands matter: `make run` (the service locally, on a throwaway Samba AD DC) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# checkov pins many packages of its own, so it gets a virtualenv of its own.
INFRA_VENV := .venv-infra
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-packages run test lint typecheck unit infra-check clean bench bench-quick lock

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	@# The runtime lock file carries hashes: pip checks every file against them (hash-checking mode).
	$(BIN)/pip install --quiet -r requirements.txt
	@# The test tools may not move a runtime package: the lock's versions become constraints (without hashes
	@# and extras, which constraints cannot carry).
	sed -n 's/^\([A-Za-z0-9_.-]*\)\(\[[^]]*\]\)\{0,1\}==\([^ ]*\).*/\1==\3/p' requirements.txt > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet -r requirements-dev.txt -c $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# Resolve requirements.in into the hash-locked requirements.txt (pip-tools, in a virtualenv of its own).
lock:
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/pip install --quiet pip-tools==7.6.2
	.venv-lock/bin/pip-compile --quiet --generate-hashes --no-emit-index-url --no-emit-find-links \
	  --custom-compile-command "make lock" --output-file=requirements.txt requirements.in

$(INFRA_VENV)/.installed: requirements-infra.txt
	$(PYTHON) -m venv $(INFRA_VENV)
	$(INFRA_VENV)/bin/pip install --quiet --upgrade pip
	$(INFRA_VENV)/bin/pip install --quiet -r requirements-infra.txt
	touch $@

# Samba provides the real Active Directory domain controller the service and the tests talk to; smbclient
# the smbcacls the SMB tests read ACLs back with; Chromium the browser the console test drives.
system-packages:
	@if ! command -v samba >/dev/null || ! command -v samba-tool >/dev/null || ! command -v ldbsearch >/dev/null; then \
	  echo "installing samba (AD DC for local runs and tests)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq samba ldb-tools >/dev/null; \
	fi
	@# smbcacls (Samba's client tools) reads a home folder's ACL back in the tests, independently of our own
	@# security-descriptor code (tests/integration/test_homefolders_smb.py).
	@if ! command -v smbcacls >/dev/null; then \
	  echo "installing smbclient (smbcacls: the tests read SMB ACLs back with it)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq smbclient >/dev/null; \
	fi
	@# Debian's Chromium, which the console's browser test drives (tests/integration/test_console_browser.py).
	@if ! command -v chromium >/dev/null; then \
	  echo "installing chromium (the console's browser test)"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	fi

# Azurite (npm), the real Table storage emulator the tests start; pinned in package-lock.json.
node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

setup: $(VENV)/.installed $(INFRA_VENV)/.installed system-packages node_modules/.installed

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

infra-check: setup
	$(BIN)/python -m pytest tests/infra -q

# Benchmarks (docs/benchmarks.md): `make bench` writes the published figures; `make bench-quick` is CI's smoke test
# (small samples, under 2 minutes, output under benchmarks/results/), proving the benchmarks still run.
$(VENV)/.bench-installed: requirements-bench.txt $(VENV)/.installed
	$(BIN)/pip install --quiet -r requirements-bench.txt
	touch $@

bench: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks

bench-quick: setup $(VENV)/.bench-installed
	$(BIN)/python -m benchmarks --quick

clean:
	rm -rf $(VENV) $(INFRA_VENV) .venv-lock .local .mypy_cache .pytest_cache .ruff_cache
