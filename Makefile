# The two commands: `make run` serves on port 3000 with an embedded Redis; `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck pytest bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[redis,dev]"
	touch $(STAMP)

run: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sayit serve --port 3000

test: $(STAMP) lint typecheck pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -ra

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/sync_latency.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/longform.py

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
