# PawFinder — the commands the README promises. Everything runs from the project root.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint format clean up down status bench-train bench-serve bench-onnx

install: $(STAMP) ## Create .venv and install the project with EXTRAS (default: all); quick when nothing changed.

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	@touch $@

$(BIN)/pytest $(BIN)/ruff: | $(STAMP)
	$(BIN)/python -m pip install --quiet -e ".[dev]"

test: install $(BIN)/pytest ## Run the test suite (real MLflow, Ray and HTTP on 127.0.0.1; no network).
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: install $(BIN)/ruff ## ruff check + ruff format --check.
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install $(BIN)/ruff ## Apply ruff fixes and formatting.
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

up: install ## Start the whole local stack on 127.0.0.1 (trains + promotes a first model when there is no champion).
	$(BIN)/pawfinder stack up

down: ## Stop exactly what `make up` started.
	@test -x $(BIN)/pawfinder || { echo "nothing to stop: no .venv"; exit 0; }; $(BIN)/pawfinder stack down

status: ## Show what runs (pid, port, health, URL).
	@test -x $(BIN)/pawfinder || { echo "nothing runs: no .venv"; exit 0; }; $(BIN)/pawfinder stack status

bench-train: install ## Train the `full` profile on PAWFINDER_DATA_DIR: wall time, test top-1 (overall, per variant), model size.
	$(BIN)/python benchmarks/bench_train.py $(BENCH_ARGS)

bench-serve: install ## Serve the champion and load it at concurrency 1/4/16/32 against a naive FastAPI+PyTorch baseline.
	$(BIN)/python benchmarks/bench_serve.py $(BENCH_ARGS)

bench-onnx: install ## ONNX Runtime latency per image by threads and batch size.
	$(BIN)/python benchmarks/bench_onnx.py $(BENCH_ARGS)

clean: ## Remove caches (keeps .venv and .pawfinder).
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
