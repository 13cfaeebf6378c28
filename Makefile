# edgeship — every target installs what it needs: its own .venv, and Mosquitto where it can.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= edge,cloud,dev,tracking
PYTEST_ARGS ?=

.PHONY: demo test test-random lint bench venv mosquitto clean help

help:
	@echo "make demo   - the whole system on embedded defaults (synthetic data, embedded broker, two agents)"
	@echo "make test   - lint, then unit and integration tests (starts its own Mosquitto on loopback ports)"
	@echo "make lint   - ruff and vulture (configured in pyproject.toml)"
	@echo "make bench  - benchmarks, written to BENCHMARKS.md"

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

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
