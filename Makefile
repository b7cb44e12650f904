# The two commands: `make run` serves on port 3000 with an embedded Redis; `make test` checks everything.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUN_STAMP := $(VENV)/.run-installed
TEST_STAMP := $(VENV)/.test-installed
BENCH_STAMP := $(VENV)/.bench-installed
# The Mac's engine where it runs: natively on Apple Silicon, MLX's CPU build on Linux (for the tests).
ifeq ($(shell uname -s),Linux)
TEST_EXTRAS := redis,dev,mlx-cpu
TORCH_CPU := torch==2.13.0
else
TEST_EXTRAS := redis,dev,mlx
endif

.PHONY: run test test-fast lint typecheck pytest tools bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[redis,mlx]"
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(if $(TORCH_CPU),$(BIN)/python -m pip install --quiet $(TORCH_CPU))
	$(BIN)/python -m pip install --quiet -e ".[$(TEST_EXTRAS)]"
	touch $@

run: $(RUN_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/sayit serve --port 3000

test: lint typecheck pytest

# Unit tests that need neither the model nor a node (real Redis still), in about half a minute.
test-fast: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/pytest -m "not slow" -q

lint: $(TEST_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(TEST_STAMP)
	$(BIN)/mypy

# Two workers, a test file each at a time: most slow tests wait on nodes, sockets and Redis, so a
# second file runs meanwhile (about 10 minutes on 2 cores instead of 17).
pytest: $(TEST_STAMP) tools
	HF_HUB_OFFLINE=1 $(BIN)/pytest -ra -n 2 --dist loadfile

# promtool checks the Prometheus files in ops/ (Debian's prometheus package; installed when root).
tools:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
		&& apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; } \
		|| echo "promtool is missing (apt-get install prometheus): its test will be skipped"

$(BENCH_STAMP): $(TEST_STAMP)
	$(BIN)/python -m pip install --quiet -e ".[$(TEST_EXTRAS),bench]"
	touch $@

# Every benchmark (about an hour on 2 cores), then docs/PERFORMANCE.md and its plots (and docs/ACCURACY.md).
bench: $(BENCH_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python bench/sync_latency.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/throughput.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/longform.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/scaleout.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/memory.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/batching.py
	HF_HUB_OFFLINE=1 $(BIN)/python bench/accuracy.py
	$(BIN)/python bench/report.py

# The chaos soak for 5 minutes (make test runs a 45 s one): figures in docs/results/chaos.json.
chaos: $(TEST_STAMP)
	HF_HUB_OFFLINE=1 SAYIT_CHAOS_S=300 SAYIT_CHAOS_REPORT=docs/results/chaos.json $(BIN)/pytest tests/test_chaos.py -s

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
