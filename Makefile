# PawFinder — the commands the README promises. Everything runs from the project root.
SHELL := /bin/bash
VENV ?= .venv
PYTHON ?= python3
EXTRAS ?= all
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: install test lint format clean

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

clean: ## Remove caches (keeps .venv and .pawfinder).
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
