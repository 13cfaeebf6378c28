# edgeship — every target installs what it needs: its own .venv, and Mosquitto where it can.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS ?= edge,cloud,dev
PYTEST_ARGS ?=

.PHONY: demo test bench venv mosquitto clean help

help:
	@echo "make demo   - the whole system on embedded defaults (synthetic data, embedded broker, two agents)"
	@echo "make test   - unit and integration tests (starts its own Mosquitto on loopback ports)"
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
	@if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq mosquitto mosquitto-clients; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq mosquitto mosquitto-clients; \
	  else echo "Mosquitto is missing: apt-get install mosquitto mosquitto-clients"; exit 1; fi; \
	fi
	@if ! command -v strace >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq strace; \
	  elif command -v sudo >/dev/null; then sudo apt-get update -qq && sudo apt-get install -y -qq strace; \
	  else echo "strace is missing (the no-phone-home test needs it): apt-get install strace"; exit 1; fi; \
	fi

demo: venv
	ORT_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/edgeship demo

test: venv mosquitto
	ORT_DISABLE_TELEMETRY=1 GRADIO_ANALYTICS_ENABLED=False $(BIN)/python -m pytest $(PYTEST_ARGS)

bench: venv mosquitto
	ORT_DISABLE_TELEMETRY=1 $(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
