# The two commands of the README: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint bench clean

# reportd and its runtime dependencies only.
$(BIN)/reportd: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	@touch $@

# The test extras on top (pytest and its plugins, ruff, trustme, ...); again whenever reportd is.
$(BIN)/pytest: $(BIN)/reportd
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

# Install, then run the daemon on its embedded defaults (SQLite, 127.0.0.1:8141).
run: $(BIN)/reportd
	$(BIN)/reportd serve

# Install with the test dependencies, then lint, check imports and types, and run the whole suite.
test: $(BIN)/pytest
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/pytest

bench: $(BIN)/reportd
	$(BIN)/python bench/ingest.py --resources 50 --duration 60

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
