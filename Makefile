# The README's commands. Everything runs from the project's own .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install tools demo test test-unit lint bench infra-up infra-down infra-status clean

install: $(STAMP)  ## create .venv and install agegate with its dev extras (idempotent)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $(STAMP)

# Tools the tests need besides Python packages: kustomize renders deploy/k8s for its tests. Built
# into .venv/bin by deploy/tools/install-kustomize.sh (needs Go >= 1.22; never a system path).
tools: $(BIN)/kustomize

$(BIN)/kustomize: deploy/tools/install-kustomize.sh | $(STAMP)
	AGEGATE_TOOLS_BIN="$(abspath $(BIN))" bash deploy/tools/install-kustomize.sh

infra-up:  ## start the local Kafka, Redis and single-node Redis Cluster (deploy/local)
	bash deploy/local/infra.sh up

infra-down:
	bash deploy/local/infra.sh down

infra-status:
	bash deploy/local/infra.sh status

demo: install  ## the main job end to end on local defaults
	$(BIN)/agegate demo

test: install tools  ## every test CI runs; integration tests use the real Kafka and Redis
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-unit: install tools
	$(BIN)/python -m pytest -m "not integration" $(PYTEST_ARGS)

lint: install  ## ruff (lint, complexity and format), mypy, the Dockerfile
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	@if [ -x deploy/tools/lint-dockerfile.sh ]; then bash deploy/tools/lint-dockerfile.sh; fi

bench: install  ## benchmarks (never part of `make test`); JSON lands in bench/results/
	@set -e; for b in bench/inference.py bench/codec.py bench/calibration.py bench/belief_safety.py bench/belief.py bench/worker.py bench/pipeline.py bench/replay.py; do \
	  if [ -f $$b ]; then echo "== $$b"; $(BIN)/python $$b $(BENCH_ARGS); fi; done

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache
