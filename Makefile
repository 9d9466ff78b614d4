# Nudge — every set-up step a fresh Debian/Ubuntu machine needs lives here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: help venv install install-unlocked install-test binaries postgresql chromium run worker demo-api test lint check demo bench clean

help:
	@echo "make run    - install and start Nudge (receiver + delivery) on http://127.0.0.1:8080"
	@echo "make test   - install test dependencies and the real Prometheus/Alertmanager, run everything"
	@echo "make demo-api - run the demo API product (metrics + user directory) on :8000"
	@echo "make demo   - run the whole loop natively: demo API, Prometheus, Alertmanager, Nudge, SMTP catcher"
	@echo "make bench  - run the benchmark suite"
	@echo "make check  - nudge check on the shipped config, templates and rules"

$(BIN)/python:
	$(PYTHON) -c 'import sys; sys.exit("Nudge needs Python >= 3.11, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV) || { echo "python3 -m venv failed: on Debian/Ubuntu run 'apt-get install python3-venv'"; exit 1; }
	$(BIN)/pip install -q --upgrade pip

venv: $(BIN)/python

$(BIN)/nudge: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	@touch $@

# `make run` and `make demo-api` started together (the quick start's two terminals): the
# second waits on this lock for the first's install instead of using a half-made venv.
install:
	@if command -v flock >/dev/null; then \
	    mkdir -p $(dir $(VENV)) var && flock var/.install.lock $(MAKE) --no-print-directory install-unlocked; \
	else $(MAKE) --no-print-directory install-unlocked; fi

install-unlocked: $(BIN)/nudge

$(VENV)/.test-deps: $(BIN)/nudge pyproject.toml
	$(BIN)/pip install -q -e '.[test]'
	@touch $@

install-test: install $(VENV)/.test-deps binaries postgresql chromium nginx

# A real PostgreSQL server for the PostgreSQL engine's tests (each test session runs a
# throwaway cluster of its own), and docker-compose to check the compose files.
postgresql:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || [ -n "$$NUDGE_PG_BINDIR" ] \
	    || command -v initdb >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "Installing postgresql and docker-compose from the distribution's packages"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	        postgresql docker-compose >/dev/null; \
	else \
	    echo "PostgreSQL server binaries not found: install postgresql or set NUDGE_PG_BINDIR"; exit 1; \
	fi
	@command -v docker-compose >/dev/null || ! command -v apt-get >/dev/null || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	        --no-install-recommends docker-compose >/dev/null; }

# Debian's headless chromium and its WebDriver, for the preference page's browser tests (the
# tests drive them with selenium; no browser is downloaded). CHROMIUM_BIN/CHROMEDRIVER_BIN
# point at others.
chromium:
	@if [ -n "$$CHROMIUM_BIN" ] && [ -n "$$CHROMEDRIVER_BIN" ]; then :; \
	elif command -v chromium >/dev/null \
	    && command -v chromedriver >/dev/null; then :; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "Installing chromium and chromium-driver from the distribution's packages"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	        chromium chromium-driver >/dev/null; \
	else \
	    echo "chromium/chromedriver not found: install them or set CHROMIUM_BIN and CHROMEDRIVER_BIN"; exit 1; \
	fi

# Real Prometheus, Alertmanager, promtool and amtool for the rule and end-to-end tests.
binaries:
	@if command -v prometheus >/dev/null && command -v promtool >/dev/null && command -v amtool >/dev/null \
	    && { command -v alertmanager || command -v prometheus-alertmanager; } >/dev/null; then :; \
	elif [ -n "$$PROMETHEUS_BIN" ] && [ -n "$$ALERTMANAGER_BIN" ]; then :; \
	elif command -v apt-get >/dev/null; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "Installing prometheus and prometheus-alertmanager from the distribution's packages"; \
	    $$SUDO apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends \
	        prometheus prometheus-alertmanager >/dev/null; \
	else \
	    echo "prometheus/alertmanager not found: install them or set PROMETHEUS_BIN and ALERTMANAGER_BIN"; exit 1; \
	fi

# nginx, to test the buffering proxy shipped in front of the public listener
# (deploy/nginx-public.conf, tests/test_public_proxy.py).
.PHONY: nginx
nginx:
	@command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || ! command -v apt-get >/dev/null || { \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    echo "Installing nginx from the distribution's packages"; \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq \
	        --no-install-recommends nginx >/dev/null; }

run: export NUDGE_WEBHOOK_TOKEN ?= $(if $(NUDGE_WEBHOOK_TOKEN_FILE),,dev-token)
run: export NUDGE_DEV ?= 1
run: install
	$(BIN)/nudge serve

worker: install
	$(BIN)/nudge worker

demo-api: install
	$(BIN)/python -m demo_api

lint: install $(VENV)/.test-deps
	$(BIN)/ruff check .

test: install-test
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

check: install
	$(BIN)/nudge check

demo: install-test
	$(BIN)/python -m demo_api.loop

bench: install-test
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) var .pytest_cache .ruff_cache *.egg-info
