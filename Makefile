# edgeship — every target installs what it needs: its own .venv, and Mosquitto where it can.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= edge,cloud,validate,dev,tracking
PYTEST_ARGS ?=

.PHONY: demo test test-random lint bench venv mosquitto clean help arm64-smoke dist

help:
	@echo "make demo   - the whole system on embedded defaults (synthetic data, embedded broker, two agents)"
	@echo "make test   - lint, then unit and integration tests (starts its own Mosquitto on loopback ports)"
	@echo "make lint   - ruff and vulture (configured in pyproject.toml)"
	@echo "make bench  - benchmarks, written to BENCHMARKS.md"
	@echo "make arm64-smoke - the agent on aarch64 under qemu vs the x86 agent (root; builds a cached arm64 root)"
	@echo "make dist   - sdist + wheel in dist/, twine check"

venv: $(STAMP)

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "edgeship needs Python 3.11, found " + sys.version' 
	@if [ ! -x $(BIN)/python ]; then \
	  $(PYTHON) -m venv $(VENV) || { \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	      apt-get update -qq && apt-get install -y -qq python3.11-venv && $(PYTHON) -m venv $(VENV); \
	    else echo "python3.11-venv is missing: sudo apt-get install python3.11-venv"; exit 1; fi; }; \
	fi
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[$(EXTRAS)]'
	@touch $@

mosquitto:
	@bash scripts/test-deps.sh

demo: venv
	ORT_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/edgeship demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/vulture

test: venv mosquitto lint
	ORT_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest $(PYTEST_ARGS)

test-random: venv mosquitto
	ORT_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest -o addopts="" -p randomly $(PYTEST_ARGS)

bench: venv mosquitto
	ORT_DISABLE_TELEMETRY=1 $(BIN)/python -m bench.run

# The edge wheel on an emulated aarch64 Debian root (qemu-user-static, debootstrap; ~4 min the first
# time, the root is cached), against Mosquitto on loopback; not in `make test` (minutes of emulation).
arm64-smoke: venv mosquitto
	PYTHON=$(abspath $(BIN)/python) bash scripts/arm64-smoke.sh

dist: venv
	rm -rf dist && $(BIN)/python -m build --sdist --wheel --outdir dist . && $(BIN)/python -m twine check --strict dist/*

clean:
	rm -rf $(VENV) .venv-edge .venv-legacy .pytest_cache build dist *.egg-info
